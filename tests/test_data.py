"""The data-building machinery (``diffcore.data``): atomic builds, idempotence, manifests, clear errors."""

from __future__ import annotations

import json
import sys
import types

import pytest

from diffcore import cli, data


@pytest.fixture
def fake_builder(monkeypatch):
    """Register a builder named ``fake`` that writes a few files; ``calls`` counts its runs."""
    mod = types.ModuleType("fake_builder")
    mod.VERSION = 1
    mod.calls = 0
    mod.fail_after_write = False

    def build(ctx: data.BuildContext) -> dict:
        mod.calls += 1
        (ctx.out / "train").mkdir()
        rng = ctx.rng("numbers")
        (ctx.out / "train" / "numbers.txt").write_text(" ".join(str(x) for x in rng.integers(0, 100, 20)))
        (ctx.out / "README").write_text("fake")
        if mod.fail_after_write:
            raise KeyboardInterrupt  # an interrupted build, mid-way
        ctx.record_source("fake-source", "1.0")
        return {"format": "fake", "splits": {"train": {"documents": 1, "tokens": 20}}}

    mod.build = build
    monkeypatch.setitem(sys.modules, "fake_builder", mod)
    monkeypatch.setitem(data.BUILDERS, "fake", "fake_builder")
    return mod


def test_build_writes_manifest_with_checksums_and_is_idempotent(tmp_path, fake_builder):
    path = data.build("fake", "tiny", root=tmp_path, progress=False)
    assert path == tmp_path / "fake-tiny"
    m = data.load_manifest(path)
    assert m["name"] == "fake" and m["size"] == "tiny" and m["seed"] == 0 and m["builder_version"] == 1
    assert m["sources"] == {"fake-source": "1.0"} and m["format"] == "fake"
    assert set(m["files"]) == {"README", "train/numbers.txt"}
    assert data.verify(path) == []
    # building again is a no-op: the builder does not run, the files are untouched
    before = (path / "train" / "numbers.txt").stat().st_mtime_ns
    assert data.build("fake", "tiny", root=tmp_path, progress=False) == path
    assert fake_builder.calls == 1 and (path / "train" / "numbers.txt").stat().st_mtime_ns == before


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path, fake_builder):
    a = data.load_manifest(data.build("fake", "tiny", root=tmp_path / "a", progress=False))["files"]
    b = data.load_manifest(data.build("fake", "tiny", root=tmp_path / "b", progress=False))["files"]
    c = data.load_manifest(data.build("fake", "tiny", root=tmp_path / "c", seed=1, progress=False))["files"]
    assert a == b and a["train/numbers.txt"] != c["train/numbers.txt"]


def test_a_different_build_is_not_replaced_without_force(tmp_path, fake_builder):
    data.build("fake", "tiny", root=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match=r"seed: 0 there, 3 asked.*force=True"):
        data.build("fake", "tiny", root=tmp_path, seed=3, progress=False)
    path = data.build("fake", "tiny", root=tmp_path, seed=3, force=True, progress=False)
    assert data.load_manifest(path)["seed"] == 3 and fake_builder.calls == 2
    assert not list(tmp_path.glob(".fake-tiny.*.old"))


def test_interrupted_build_leaves_no_finished_looking_set(tmp_path, fake_builder):
    fake_builder.fail_after_write = True
    with pytest.raises(KeyboardInterrupt):
        data.build("fake", "tiny", root=tmp_path, progress=False)
    assert not (tmp_path / "fake-tiny").exists()
    assert not list(tmp_path.glob(".fake-tiny.*.partial"))
    # a partial directory left by a killed process is removed by the next build
    (tmp_path / ".fake-tiny.deadbeef.partial").mkdir()
    fake_builder.fail_after_write = False
    data.build("fake", "tiny", root=tmp_path, progress=False)
    assert not list(tmp_path.glob(".fake-tiny.*.partial"))
    # an existing finished set survives a failed forced rebuild
    fake_builder.fail_after_write = True
    with pytest.raises(KeyboardInterrupt):
        data.build("fake", "tiny", root=tmp_path, seed=5, force=True, progress=False)
    assert data.load_manifest(tmp_path / "fake-tiny")["seed"] == 0 and data.verify(tmp_path / "fake-tiny") == []


def test_refuses_to_overwrite_a_foreign_directory(tmp_path, fake_builder):
    (tmp_path / "fake-tiny").mkdir()
    (tmp_path / "fake-tiny" / "my_thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a built data set"):
        data.build("fake", "tiny", root=tmp_path, progress=False)
    assert (tmp_path / "fake-tiny" / "my_thesis.tex").read_text() == "precious"


def test_verify_reports_changed_missing_and_extra_files(tmp_path, fake_builder):
    path = data.build("fake", "tiny", root=tmp_path, progress=False)
    (path / "README").write_text("edited")
    (path / "train" / "numbers.txt").unlink()
    (path / "extra").write_text("x")
    assert data.verify(path) == ["README", "extra", "train/numbers.txt"]
    assert cli.main(["data", "verify", "fake", "--size", "tiny", "--root", str(tmp_path)]) == 1


def test_bad_names_and_missing_dependencies_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="built-in sets are (?=.*speech)(?=.*sounds)(?=.*text)"):
        data.dataset_dir("music")
    with pytest.raises(ValueError, match="tiny, small, full"):
        data.dataset_dir("speech", "huge")
    with pytest.raises(data.MissingDependencyError, match="install it with: apt-get install no-such-tool"):
        data.require_command("no-such-tool-xyz", "apt-get install no-such-tool")
    with pytest.raises(data.MissingDependencyError, match="pip install nothing-here"):
        data.require_module("nothing_here_xyz", "pip install nothing-here")
    with pytest.raises(data.DataError, match="diffcore data build"):
        data.load_manifest(tmp_path)


def test_builders_and_their_debian_packages_come_from_entry_points():
    """The core finds the builders through the ``diffcore.datasets`` entry points (it names no system)."""
    assert data.BUILDERS == {"speech": "audiodiff.data.speech", "sounds": "audiodiff.data.sounds",
                             "text": "textdiff.data.text"}
    assert data.system_packages(["text"]) == ("wordnet-base",)
    every = data.system_packages()
    assert len(every) == len(set(every)) and {"fluidsynth", "espeak-ng", "wordnet-base"} <= set(every)


def test_data_home_and_cli_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFCORE_DATA_HOME", str(tmp_path / "home"))
    assert data.dataset_dir("text", "full") == tmp_path / "home" / "text-full"
    assert cli.main(["data", "path", "speech", "--size", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "home" / "speech-tiny")


def test_split_assignment_is_stable_and_close_to_fractions():
    fr = {"train": 0.8, "validation": 0.1, "test": 0.1}
    got = [data.assign_split(f"doc{i}", fr, seed=0) for i in range(5000)]
    assert got == [data.assign_split(f"doc{i}", fr, seed=0) for i in range(5000)]
    assert abs(got.count("train") / 5000 - 0.8) < 0.03 and abs(got.count("test") / 5000 - 0.1) < 0.02
    assert got != [data.assign_split(f"doc{i}", fr, seed=1) for i in range(5000)]
    assert json.dumps(data.stable_rng("a", 1, seed=2).integers(0, 1000, 5).tolist()) == \
        json.dumps(data.stable_rng("a", 1, seed=2).integers(0, 1000, 5).tolist())

"""Shared test set-up."""

import os
from collections.abc import Callable

import pytest
import torch

# The tests use many small tensors; on a 2-core CI machine one intra-op thread is fastest and keeps
# timings stable when other processes share the machine.
torch.set_num_threads(1)


# --- system packages (Debian programs, data files) that some tests need -----------------------------


@pytest.fixture(scope="session")
def need_system() -> Callable[[Callable[[], object]], None]:
    """``need_system(check)`` runs ``check`` (e.g. ``speech.check_requirements``); a missing program or
    package skips the test, or fails it when ``DIFFCORE_REQUIRE_SYSTEM=1`` (set by CI, which installs them)."""
    from diffcore.data import MissingDependencyError

    def need(check: Callable[[], object]) -> None:
        try:
            check()
        except MissingDependencyError as e:
            if os.environ.get("DIFFCORE_REQUIRE_SYSTEM") == "1":
                pytest.fail(f"DIFFCORE_REQUIRE_SYSTEM=1 but: {e}")
            pytest.skip(str(e))

    return need


@pytest.fixture(scope="session")
def loss_recorder() -> type:
    """A Lightning callback class whose instances record every training step's loss in ``.losses``."""
    from lightning.pytorch.callbacks import Callback

    class LossRecorder(Callback):
        def __init__(self):
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    return LossRecorder


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    """One folder for the tiny built-in sets of the whole session (the demo's smoke run reuses them)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def speech_tiny(tiny_data_root, need_system):
    """The built-in speech set at size tiny, built once per test session."""
    from audiodiff.data import speech
    from diffcore.data import build

    need_system(speech.check_requirements)
    return build("speech", "tiny", root=tiny_data_root, progress=False)


@pytest.fixture(scope="session")
def sounds_tiny(tiny_data_root, need_system):
    """The built-in sounds set at size tiny, built once per test session."""
    from audiodiff.data import sounds
    from diffcore.data import build

    need_system(sounds.check_requirements)
    return build("sounds", "tiny", root=tiny_data_root, progress=False)

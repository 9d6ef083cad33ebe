"""Progress where waits are long (issue 18): a long method on one image shows its own steps
inside the CLI's bar, deletion/insertion show theirs, nothing is drawn off a terminal."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from PIL import Image
from rich.console import Console
from rich.progress import Progress as RichProgress

import cnnlens.core.progress as progress_mod
from cnnlens.core.progress import progress_bar, shows_progress
from cnnlens.metrics import deletion, insertion
from cnnlens.models import SimpleCNN


class _Spy:
    """Stands in for the terminal: records every line added to a bar and whether one was
    drawn."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, float | None]] = []
        self.started = 0

    def bar(self, transient: bool) -> Any:
        bar = RichProgress(
            console=Console(file=io.StringIO(), force_terminal=True), transient=transient
        )
        add, start = bar.add_task, bar.start

        def add_task(description: str, total: float | None = None, **kw: Any) -> Any:
            self.tasks.append((description, total))
            return add(description, total=total, **kw)

        def started() -> None:
            self.started += 1
            start()

        bar.add_task, bar.start = add_task, started  # type: ignore[method-assign]
        return bar


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    found = _Spy()
    monkeypatch.setattr(progress_mod, "_terminal", lambda: True)
    monkeypatch.setattr(progress_mod, "_rich_bar", found.bar)
    return found


def test_one_image_with_a_long_method_shows_the_method_s_steps(spy: _Spy, tmp_path) -> None:
    from cnnlens.pipelines.explain import run_explain

    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "a.png")
    run_explain(
        [tmp_path / "a.png"],
        model="simplecnn",
        out=tmp_path / "out",
        methods=["rise", "integrated_gradients"],
        options=["rise.n_masks=12", "integrated_gradients.n_steps=5"],
        progress=True,
    )
    names = [d for d, _ in spy.tasks]
    assert names[0] == "explaining" and spy.tasks[0][1] == 1  # the images
    assert ("rise", 12) in spy.tasks  # and inside it, each mask of the one image
    assert any(d == "integrated gradients" and t and t >= 5 for d, t in spy.tasks), spy.tasks
    assert spy.started == 1 and not shows_progress()  # one bar drawn, and closed


def test_deletion_and_insertion_show_progress_and_stay_quiet_when_asked(
    spy: _Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    net = SimpleCNN(num_classes=3).eval()
    x, maps = torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32)
    deletion(net, x, maps, step=128, progress=True)
    assert spy.tasks == [("deletion", 2 * 9)] and spy.started == 1  # 8 steps + the intact image
    insertion(net, x, maps, step=128, progress=False)
    assert len(spy.tasks) == 1  # quiet= False: no bar
    insertion(net, x, maps, step=128)  # default: a bar, drawn only once the curve runs long
    assert spy.tasks[-1] == ("insertion", 18) and spy.started == 1
    monkeypatch.setattr(progress_mod, "AUTO_DELAY", 0.0)
    insertion(net, x, maps, step=128)
    assert spy.started == 2


def test_inner_loops_join_the_open_bar_and_leave_it(spy: _Spy) -> None:
    with progress_bar(True, 2, "outer") as outer:
        with progress_bar(False, 5, "inner") as inner:  # a library loop, quiet by default
            assert shows_progress()
            inner.advance(5)
        outer.advance(2)
    assert spy.tasks == [("outer", 2), ("inner", 5)] and spy.started == 1
    assert not shows_progress()


def test_nothing_is_drawn_off_a_terminal(capsys) -> None:
    with progress_bar(True, 3, "quiet") as bar:  # pytest's stderr is no terminal
        assert not shows_progress()
        bar.advance(3)
    assert capsys.readouterr().err == ""


def test_the_prototype_step_shows_progress(spy: _Spy) -> None:
    from cnnlens.prototypes import class_prototypes

    torch.manual_seed(0)
    net = SimpleCNN(num_classes=3, in_channels=1)
    with pytest.warns(UserWarning, match="did not reach"):  # 3 steps: far from the target
        class_prototypes(net, [0, 1], shape=(1, 32, 32), steps=3, progress=True)
    assert spy.tasks and spy.tasks[0][1] == 3 and spy.started == 1

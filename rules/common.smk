# Grid expansion and the helpers every rule uses. The run set comes from
# stability.grid (unit-tested there); this file only adapts it to Snakemake.
import glob
import os
import shlex
import sys
from pathlib import Path

from stability import corpus
from stability.config import ConfigError  # the Snakefile put the package on sys.path
from stability.grid import expand as expand_studies, runs_by_id, observer_set_args, data_set_args, shell_set_args
from stability import resources as res
from stability.figure_names import figures_for
from stability import findings_doc
from stability import fusion


def _load_studies():
    try:
        studies = expand_studies(config)
        findings_doc.check_study_findings({name: st.findings for name, st in studies.items()})
        return studies
    except ConfigError as e:  # the same validator `stability train` uses
        refuse(e)


# Each local corpus is fingerprinted once per planning (run ids include its content); a job
# that finds it changed since is refused by --expect-run-id / --expect-data-id.
corpus.freeze()
RESULTS = config.get("results", "results")
# The interpreter running Snakemake runs the CLI too: no reliance on PATH or an activated venv.
STABILITY = f"{shlex.quote(sys.executable)} -m stability"
STUDIES = _load_studies()
RUNS = runs_by_id(STUDIES)
DATA = {}  # data_id -> a run config that describes it
for _cfg in RUNS.values():
    DATA.setdefault(_cfg.data_id(), _cfg)
FINDINGS_DOC = config.get("findings_doc", f"{RESULTS}/findings.md")
# The figures the findings page shows, copied beside it (docs/ can be committed; results/ is not).
FINDINGS_FIGURES = str(Path(FINDINGS_DOC).with_suffix("")) + "_figures"
try:
    SUPPLEMENTS = findings_doc.load_supplements(config.get("findings_supplements", []))
except ConfigError as e:
    refuse(e)
REGENERATE_COMMAND = "snakemake --cores 2" + (
    "" if not workflow.overwrite_configfiles else " --configfile " + " ".join(os.path.relpath(f) for f in workflow.overwrite_configfiles)
)
THREADS = config.get("train_threads", 1)
# Every rule runs the same package, so they share the project's one environment file
# (used with --use-conda / --sdm conda; ignored otherwise).
CONDA_ENV = "../environment.yml"
GPU = bool(config.get("gpu", False))
# Fused sweeps (rules/train.smk): `fuse` and what `auto` reads to decide where fusing pays.
FUSE = config.get("fuse", "auto")
GPU_NAME = config.get("gpu_name")
FUSE_BENCHMARKS = config.get("fuse_benchmarks") or sorted(
    glob.glob(f"{workflow.basedir}/benchmarks/results/**/fused_sweep*.json", recursive=True)
)


wildcard_constraints:
    run_id="[0-9a-f]{12}",
    study="|".join(STUDIES),


def run_dir(run_id):
    return f"{RESULTS}/runs/{run_id}"


def train_args(run_id):
    """The exact `--set` list that rebuilds the run's config (shell-quoted; lossless, see
    stability.grid.set_args), less its observer keys (observer_args)."""
    return shell_set_args(observer_set_args(RUNS[run_id])[0] + [f"data.cache_dir={RESULTS}/data"])


class Unversioned:
    """A param Snakemake's params rerun trigger does not record: it serialises builtin values
    only (snakemake.persistence._serialize_param); the shell command formats it by str()."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


def observer_args(run_id):
    """The `--set` list of the run's observer keys (RunConfig.observer_keys: out of its run id),
    unversioned, so turning `train.early_warning: report` on retrains nothing."""
    return Unversioned(shell_set_args(observer_set_args(RUNS[run_id])[1]))


def data_args(data_id):
    """Only what the dataset depends on, so the command (a rerun-trigger param) does not
    change with whichever run happens to describe the dataset first."""
    return shell_set_args(data_set_args(DATA[data_id]) + [f"data.cache_dir={RESULTS}/data"])


def study_summaries(wildcards):
    return expand(rules.train.output.summary, run_id=STUDIES[wildcards.study].run_ids)


def study_manifest(study):
    """The study's grid points in a canonical order: reordering keys in the YAML is not a
    change (this list is a rerun-trigger param)."""
    rows = [p.manifest_row() for p in STUDIES[study].points]
    return sorted(rows, key=lambda r: (r["scale"], r["variant"], r["lr"], r["seed"]))


def study_options(study):
    """The study's analysis options over the shared ones."""
    return {**config.get("analysis", {}), **STUDIES[study].options}


# Studies whose variants are ranked on the intervention leaderboard (rules/leaderboard.smk).
LEADERBOARD_STUDIES = [name for name, st in STUDIES.items() if study_options(name).get("leaderboard")]
LEADERBOARD_DOC = config.get("leaderboard_doc")
if LEADERBOARD_DOC and len(LEADERBOARD_STUDIES) != 1:
    refuse(f"leaderboard_doc: expected exactly one study with analysis.leaderboard: true, got {len(LEADERBOARD_STUDIES)}")
if len(LEADERBOARD_STUDIES) == 1:
    LEADERBOARD_DOC = LEADERBOARD_DOC or f"{RESULTS}/leaderboard.md"
LEADERBOARD_STUDY = LEADERBOARD_STUDIES[0] if LEADERBOARD_DOC else None


def study_info(study):
    st = STUDIES[study]
    return {"name": st.name, "findings": st.findings, "reference": st.reference, "options": study_options(study)}


def figure_targets(study):
    return expand(rules.figure.output.png, study=study, figure=figures_for(STUDIES[study].findings))


def findings_inputs(wildcards):
    """Each study's claims.json and figure PNGs, named by study (findings_doc.rule_inputs);
    supplements (other config files' results) count only once they exist."""
    claims = {st: expand(rules.analyse.output.claims, study=st)[0] for st in STUDIES}
    figures = {st: figure_targets(st) for st in STUDIES}
    return findings_doc.rule_inputs({**claims, **findings_doc.supplement_claims(SUPPLEMENTS)},
                                    {**figures, **findings_doc.supplement_figures(SUPPLEMENTS)})


def final_targets():
    targets = [FINDINGS_DOC, FINDINGS_FIGURES]
    for name in STUDIES:
        out = rules.analyse.output
        targets += expand([out.claims, out.forecast, out.forecast_table], study=name)
        targets += figure_targets(name)
    for name in LEADERBOARD_STUDIES:
        targets += expand(list(rules.leaderboard.output), study=name)
    if LEADERBOARD_DOC:
        targets += list(rules.leaderboard_doc.output)
    return targets

"""``slowfast evaluate``: the paper's Table 2 on our tasks, across memory variants.

Every variant plans the same held-out seeds. Variants (paper names in brackets):
``no-memory`` slow-learned model, no memory ["Ours wo Temp-LoRA"]; ``anchor-frame``
Streaming-T2V-like anchor; ``temp-lora`` slow-learned model + Temp-LoRA ["Ours wo
Loop"]; ``slow-fast`` finetuned model (``slowfast finetune``) + Temp-LoRA ["Ours"].
Reference rows: ``expert`` (scripted, privileged), ``idm-replay`` (the expert's
frames through the IDM, open loop) and ``no-op`` (holds still for the same frame budget:
the distance an agent scores without doing anything, which the distance alone does not
penalise, hence the task's first-phase column: cubes moved aside / path walked out).
With ``--expert-first-phase`` the scripted expert does the first phase of every variant (and
of ``no-op``, which then holds still for the return) and only the return is planned, so the
variants' rows compare returns from the same first phase (``agent/planner.py``).

Each finished episode is a file under ``OUT/episodes/``, so a rerun with the same
arguments skips it (more seeds or variants may be added; other settings are refused).
Outputs: ``results.json``, ``table.md``, ``distances.png`` and the first episode's videos
of every variant. Retrace and return_cubes distances vary by more between seeds than between
variants, so the table also pairs the variants seed by seed for each ordering the paper claims
(mean difference, bootstrap interval, Wilcoxon signed-rank p): a gap between two means is a
finding only where its interval excludes zero.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon
from tqdm import tqdm

import envs
import tasks
from agent.plan import PlanConfig, plan_episode
from agent.planner import MEMORY_SOURCES
from envs.collect import padded_expert_actions, rollout_expert
from inverse_dynamics.model import InverseDynamicsModel
from inverse_dynamics.replay import replay
from jobconfig import ConfigError, CpuThreads, load_yaml, to_yaml
from worldmodel.generate import DEFAULT_CHECKPOINTS
from worldmodel.memory import MemoryOverrides
from worldmodel.model import SamplingOverrides, VideoWorldModel, WorldModelConfig

# variant -> (world model folder under the task's checkpoints, memory mode)
VARIANTS = {
    "no-memory": ("worldmodel", "none"),
    "anchor-frame": ("worldmodel", "anchor-frame"),
    "temp-lora": ("worldmodel", "temp-lora"),
    "slow-fast": ("worldmodel_slowfast", "temp-lora"),
}
REFERENCES = ("expert", "idm-replay", "no-op")
# Options that change what an episode file holds: a rerun into the same folder must keep them.
EPISODE_OPTIONS = ("task", "backend", "checkpoint", *(f.name for f in dataclasses.fields(MemoryOverrides)),
                   *(f.name for f in dataclasses.fields(SamplingOverrides)), "memory_source", "expert_first_phase",
                   "draw")
# The paper's Table 2 claims, as (lower, higher) distance pairs, and the do-nothing row every plan must beat.
CLAIMS = (("slow-fast", "temp-lora"), ("temp-lora", "no-memory"), ("slow-fast", "no-memory"),
          ("slow-fast", "anchor-frame"), ("anchor-frame", "no-memory"), ("no-memory", "no-op"))
# The first half of each task, without which a small distance means nothing: metric key -> table column.
FIRST_PHASE = {"moved_away": "moved aside", "went_out": "went out"}
# How much of the return went the remembered way, which the distance blurs (retrace).
RETURN_PHASE = {"legs_retraced": "legs retraced"}


@dataclass
class EvaluateConfig(MemoryOverrides, SamplingOverrides, CpuThreads):
    task: str = field(default="return_cubes", metadata={"help": "task name"})
    backend: str = field(default="embedded", metadata={"help": "simulator backend"})
    variants: str = field(default="no-memory,anchor-frame,temp-lora,slow-fast",
                          metadata={"help": "comma-separated variants"})
    episodes: int = field(default=10, metadata={"help": "episodes per variant (seeds SEED..SEED+N-1)"})
    seed: int = field(default=10_000, metadata={"help": "first held-out seed"})
    draw: int = field(default=0, metadata={
        "help": "the planners' noise draw (plan --draw); a folder per draw, paired by seed, shows how much of a "
                "difference between variants the sampler's chance alone makes"})
    checkpoint: str | None = field(default=None, metadata={"help": "task checkpoint folder",
                                                           "default_text": "checkpoints/TASK"})
    out: str = field(default="runs/evaluate", metadata={"help": "output folder"})
    memory_source: str = field(default="imagined", metadata={
        "help": "Temp-LoRA trains on each imagined chunk (Alg. 1a) or on the observed frames of that chunk"})
    expert_first_phase: bool = field(default=False, metadata={
        "help": "the scripted expert does every variant's first phase and no-op's; only the return is planned"})
    references: bool = field(default=True, metadata={"help": "also run the expert and idm-replay rows"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [v for v in self.variant_list() if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if self.memory_source not in MEMORY_SOURCES:
            raise ConfigError(f"--memory-source must be {' or '.join(MEMORY_SOURCES)}, got {self.memory_source!r}")
        if self.draw < 0:
            raise ConfigError(f"--draw must be >= 0, got {self.draw}")

    def variant_list(self) -> list[str]:
        return [v.strip() for v in self.variants.split(",") if v.strip()]


def _checkpoints(cfg: EvaluateConfig) -> dict[str, Path]:
    root = Path(cfg.checkpoint) if cfg.checkpoint else DEFAULT_CHECKPOINTS / cfg.task
    needed = {VARIANTS[v][0] for v in cfg.variant_list()} | {"idm"}
    paths = {name: root / name for name in needed}
    makers = {"worldmodel": f"slowfast train --task {cfg.task} --out {root / 'worldmodel'}",
              "worldmodel_slowfast": f"slowfast finetune --task {cfg.task} --from {root / 'worldmodel'} "
                                     f"--out {root / 'worldmodel_slowfast'}",
              "idm": f"slowfast train-idm --task {cfg.task} --out {root / 'idm'}"}
    missing = [name for name, path in paths.items() if not path.is_dir()]
    if missing:
        raise ConfigError(f"missing checkpoint(s) {', '.join(str(paths[m]) for m in missing)}; make them with: "
                          + "; ".join(makers[m] for m in missing))
    return paths


def _hold_still(env, seed: int, expert_first_phase: bool) -> dict:
    """Every subgoal's frame budget (the planner's) spent holding still; with
    ``expert_first_phase``, only the return's, after the expert did the first phase."""
    expert = envs.expert_for(env)
    env.reset(seed=seed)
    task = tasks.get(env.task_name)
    holding = not expert_first_phase
    for subgoal in env.subgoals():
        env.start_subgoal(subgoal)
        holding = holding or subgoal.kind in task.RETURN_KINDS
        for action in ([expert.hold()] * task.frames_for(subgoal) if holding
                       else padded_expert_actions(expert, task, subgoal)):
            env.step(action)
    return env.metric()


def _reference_episode(kind: str, cfg: EvaluateConfig, seed: int, idm: InverseDynamicsModel) -> dict:
    env = envs.make(cfg.task, cfg.backend)
    if kind == "no-op":
        metric = _hold_still(env, seed, cfg.expert_first_phase)
    else:
        record = rollout_expert(env, envs.expert_for(env), seed)
        metric = record["metric"] if kind == "expert" else replay(env, idm, record, seed)[0]
    env.close()
    return {"seed": seed, "distance": metric["distance"], "success": metric["success"], "metric": metric,
            "seconds": 0.0}


def summarise(per_episode: list[dict]) -> dict:
    d = np.array([e["distance"] for e in per_episode])
    summary = {"distance_mean": float(d.mean()), "distance_std": float(d.std()),
               "success_rate": float(np.mean([e["success"] for e in per_episode])),
               "seconds_per_episode": float(np.mean([e["seconds"] for e in per_episode])),
               "per_episode": [{k: e[k] for k in ("seed", "distance", "success")} for e in per_episode]}
    for key in (*FIRST_PHASE, *RETURN_PHASE):
        if all(key in e.get("metric", {}) for e in per_episode):
            summary[f"{key}_rate"] = float(np.mean([e["metric"][key] for e in per_episode]))
            for row, e in zip(summary["per_episode"], per_episode):
                row[key] = e["metric"][key]
                if key in FIRST_PHASE and "max_displacement" in e["metric"]:
                    row["max_displacement"] = e["metric"]["max_displacement"]
    # Each cube's own distance, so rows can be paired cube by cube (scripts/compare_evaluations.py --per-cube).
    for row, e in zip(summary["per_episode"], per_episode):
        if "per_cube" in e.get("metric", {}):
            row["per_cube"] = e["metric"]["per_cube"]
    return summary


def paired_differences(a, b, resamples: int = 10_000) -> dict:
    """Paired samples ``a`` against ``b``: the mean of a - b with a 95 % percentile-bootstrap
    interval (fixed RNG, so a rerun writes the same numbers), how often ``a`` was lower /
    higher, the two-sided Wilcoxon signed-rank p and the ratio of means."""
    da, db = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = da - db
    means = diff[np.random.default_rng(0).integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    return {"mean_difference": float(diff.mean()),
            "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "a_lower": int((diff < 0).sum()), "a_higher": int((diff > 0).sum()),
            "p_value": float(wilcoxon(diff).pvalue) if np.any(diff) else 1.0,
            "ratio": float(da.mean() / db.mean()) if db.mean() else None}


def paired(a: dict, b: dict, resamples: int = 10_000) -> dict:
    """Row ``a`` against row ``b`` on the seeds both ran: ``paired_differences`` of their distances."""
    b_by_seed = {e["seed"]: e["distance"] for e in b["per_episode"]}
    da, db = np.array([(e["distance"], b_by_seed[e["seed"]]) for e in a["per_episode"] if e["seed"] in b_by_seed]).T
    return {"episodes": len(da), **paired_differences(da, db, resamples)}


def paired_claims(variants: dict) -> list[dict]:
    return [{"a": a, "b": b, **paired(variants[a], variants[b])} for a, b in CLAIMS
            if a in variants and b in variants]


def write_table(results: dict, path: Path) -> None:
    unit = "m" if results["task"] == "return_cubes" else "blocks"
    titles = FIRST_PHASE | RETURN_PHASE
    columns = [key for key in titles if all(f"{key}_rate" in row for row in results["variants"].values())]
    lines = [f"| variant | distance ({unit}) mean ± std | " + "".join(f"{titles[k]} | " for k in columns)
             + "success | s / episode |", "| --- | --- | " + "--- | " * len(columns) + "--- | --- |"]
    for name, row in results["variants"].items():
        lines.append(f"| {name} | {row['distance_mean']:.4f} ± {row['distance_std']:.4f} | "
                     + "".join(f"{row[f'{k}_rate']:.0%} | " for k in columns)
                     + f"{row['success_rate']:.0%} | {row['seconds_per_episode']:.1f} |")
    if results.get("paired"):
        lines += ["", "Paired over seeds (A - B; negative: A ends nearer):", "",
                  "| A | B | mean A - B | 95 % bootstrap interval | A lower / higher | Wilcoxon p | A / B |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in results["paired"]:
            ratio = f"{c['ratio']:.2f}" if c["ratio"] is not None else "-"
            lines.append(f"| {c['a']} | {c['b']} | {c['mean_difference']:+.4f} | [{c['ci95'][0]:+.4f}, "
                         f"{c['ci95'][1]:+.4f}] | {c['a_lower']} / {c['a_higher']} of {c['episodes']} | "
                         f"{c['p_value']:.3f} | {ratio} |")
    path.write_text(f"{results['task']} ({results['backend']}), seeds {results['seed']}.."
                    f"{results['seed'] + results['episodes'] - 1}\n\n" + "\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["variants"])
    means = [results["variants"][n]["distance_mean"] for n in names]
    stds = [results["variants"][n]["distance_std"] for n in names]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.2))
    ax.bar(names, means, yerr=stds, capsize=4, color=["#999" if n in REFERENCES else "#3a7" for n in names])
    ax.set_ylabel("distance (m)" if results["task"] == "return_cubes" else "distance (blocks)")
    measured = "cubes to their original places" if results["task"] == "return_cubes" else "return path to the waypoints"
    ax.set_title(f"{results['task']}: distance of the {measured} (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _check_resumable(cfg: EvaluateConfig, out: Path) -> None:
    """Refuse to mix episodes of different settings in one folder (they would be skipped as done)."""
    if not (out / "config.yaml").is_file():
        return
    before = {f.name: f.default for f in dataclasses.fields(EvaluateConfig)} | load_yaml(EvaluateConfig,
                                                                                     out / "config.yaml")
    changed = [f"--{k.replace('_', '-')} {before[k]!r} -> {getattr(cfg, k)!r}" for k in EPISODE_OPTIONS
               if before[k] != getattr(cfg, k)]
    if changed:
        raise ConfigError(f"{out} holds episodes run with other settings ({'; '.join(changed)}); rerun with the "
                          "folder's own settings (its config.yaml) to resume, or pick another --out")


def _check_sampling(cfg: EvaluateConfig, paths: dict[str, Path]) -> None:
    """A sampling override the world models refuse fails now, not after the reference rows have run."""
    if any(value is not None for value in cfg.sampling_options().values()):
        for name in {VARIANTS[v][0] for v in cfg.variant_list()}:
            cfg.sampling_config(WorldModelConfig.from_pretrained(paths[name])).check()


def run_evaluate(cfg: EvaluateConfig) -> int:
    cfg.apply_threads()
    envs.factory(cfg.task, cfg.backend)
    paths = _checkpoints(cfg)
    out = Path(cfg.out)
    _check_resumable(cfg, out)
    _check_sampling(cfg, paths)
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    idm = InverseDynamicsModel.from_pretrained(paths["idm"])
    seeds = list(range(cfg.seed, cfg.seed + cfg.episodes))
    rows = ([*REFERENCES] if cfg.references else []) + cfg.variant_list()
    bar = tqdm(total=len(rows) * len(seeds), desc=f"evaluate {cfg.task}", unit="episode", disable=not cfg.progress)
    per_row: dict[str, list[dict]] = {}
    for row in rows:
        models = None
        per_row[row] = []
        for i, seed in enumerate(seeds):
            done = out / "episodes" / row / f"seed_{seed}" / "episode.json"
            if not done.is_file():
                if row in REFERENCES:
                    episode = _reference_episode(row, cfg, seed, idm)
                    done.parent.mkdir(parents=True, exist_ok=True)
                    done.write_text(json.dumps(episode))
                else:
                    if models is None:  # a fresh model per variant: Temp-LoRA adds adapters in place
                        models = VideoWorldModel.from_pretrained(paths[VARIANTS[row][0]])
                    plan_cfg = PlanConfig(task=cfg.task, backend=cfg.backend, memory=VARIANTS[row][1], seed=seed,
                                          out=str(done.parent), **cfg.memory_options(), **cfg.sampling_options(),
                                          memory_source=cfg.memory_source, expert_first_phase=cfg.expert_first_phase,
                                          draw=cfg.draw, videos=i == 0, progress=False)
                    plan_episode(plan_cfg, models, idm)
            per_row[row].append(json.loads(done.read_text()))
            bar.update(1)
    bar.close()
    variants = {row: summarise(eps) for row, eps in per_row.items()}
    results = {"task": cfg.task, "backend": cfg.backend, "seed": cfg.seed, "episodes": cfg.episodes,
               "variants": variants, "paired": paired_claims(variants), "config": dataclasses.asdict(cfg)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_table(results, out / "table.md")
    plot(results, out / "distances.png")
    print((out / "table.md").read_text())
    return 0

"""Robustness (paper, "further experiments"): many task vectors per task from different demonstrations and
dummy queries; do they cluster by task? t-SNE / PCA embeddings, silhouette score, cosine distances."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from taskvec.core.interfaces import Executor
from taskvec.errors import TaskvecError
from taskvec.experiments.analysis_setup import (
    AnalysisConfig,
    Progress,
    analysis_executor,
    choose_layers,
    prepare_tasks,
    run_header,
)
from taskvec.experiments.main_experiment import set_vectors, task_rng
from taskvec.models.loading import LoadedModel, load_model
from taskvec.stats import cosine_distance_matrix
from taskvec.tasks.registry import PAPER_TASKS
from taskvec.tasks.sampling import draw_splits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RobustnessConfig(AnalysisConfig):
    tasks: tuple[str, ...] = PAPER_TASKS
    n_vectors: int = 50
    perplexity: float = 30.0


def check_sizes(n_tasks: int, n_vectors: int, perplexity: float) -> None:
    """Clustering needs two tasks, two vectors per task, and more vectors in all than t-SNE's perplexity."""
    if n_tasks < 2:
        raise TaskvecError(f"robustness compares tasks: got {n_tasks} task, expected at least 2")
    if n_vectors < 2:
        raise TaskvecError(f"--n-vectors must be at least 2 (distances within a task), got {n_vectors}")
    if perplexity <= 0:
        raise TaskvecError(f"--perplexity must be positive, got {perplexity}")
    total = n_tasks * n_vectors
    if total <= perplexity:
        raise TaskvecError(
            f"t-SNE needs more vectors than its perplexity {perplexity:g}: {n_tasks} tasks x {n_vectors} vectors = "
            f"{total}; raise --n-vectors to at least {int(perplexity // n_tasks) + 1} or lower --perplexity"
        )


def distance_stats(distances: np.ndarray, labels: list[str]) -> dict[str, dict]:
    """Per label: mean cosine distance between its own vectors (pairs, no self-pairs) and to all others."""
    labels_arr = np.array(labels)
    out = {}
    for name in dict.fromkeys(labels):
        mine = labels_arr == name
        block = distances[np.ix_(mine, mine)]
        within = block[np.triu_indices(int(mine.sum()), k=1)]
        across = distances[np.ix_(mine, ~mine)].ravel()
        out[name] = {
            "within_mean": float(within.mean()),
            "within_std": float(within.std()),
            "across_mean": float(across.mean()),
            "across_std": float(across.std()),
            "ratio": float(within.mean() / across.mean()) if across.mean() > 0 else None,
        }
    return out


def embed(vectors: np.ndarray, seed: int, perplexity: float) -> tuple[dict[str, np.ndarray], list[float]]:
    """2-D t-SNE (cosine metric, fixed random_state) and PCA coordinates, one row per vector, and the
    fraction of the vectors' variance along each of the two principal components."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    pca = PCA(n_components=2, random_state=seed)
    points = {
        "tsne": tsne.fit_transform(vectors.astype(np.float64)),
        "pca": pca.fit_transform(vectors.astype(np.float64)),
    }
    return points, [float(x) for x in pca.explained_variance_ratio_]


def silhouette(distances: np.ndarray, labels: list[str]) -> float | None:
    """Silhouette score of the grouping ``labels`` under cosine distance (1: tight separate clusters);
    None when there are fewer than two groups."""
    from sklearn.metrics import silhouette_score

    if not 2 <= len(set(labels)) <= len(labels) - 1:
        return None
    return float(silhouette_score(distances, labels, metric="precomputed"))


def analyse(vectors: np.ndarray, tasks: list[str], categories: list[str], seed: int, perplexity: float) -> dict:
    """Everything computed from the vectors: distances per task, silhouette scores, 2-D embeddings."""
    distances = cosine_distance_matrix(vectors)
    points, explained = embed(vectors, seed, perplexity)
    return {
        "silhouette_task": silhouette(distances, tasks),
        "silhouette_category": silhouette(distances, categories),
        "distances": distance_stats(distances, tasks),
        "embedding": {k: v.tolist() for k, v in points.items()},
        "pca_explained_variance": explained,
    }


def collect_vectors(
    executor: Executor, config: RobustnessConfig, progress: Progress | None = None
) -> tuple[torch.Tensor, list[str], dict]:
    """``n_vectors`` thetas per task at its layer, each from fresh demonstrations and dummy queries."""
    prepared = prepare_tasks(executor.lm, config.tasks, config.shots, config.n_dummy)
    opts = dict(shots=config.shots, n_dummy=config.n_dummy, seed=config.seed)
    layers = choose_layers(executor, prepared, config.layers, progress=progress, **opts)
    rows, labels, tasks = [], [], {}
    for name, p in prepared.items():
        if progress:
            progress(f"vectors {name}")
        sets = draw_splits(p.pairs, config.shots, config.n_vectors, 0, 0, config.n_dummy, task_rng(config.seed, name))
        layer = layers[name]["layer"]
        rows.append(set_vectors(executor, p.template, sets[0], [layer])[:, 0, :])
        labels += [name] * config.n_vectors
        tasks[name] = {"category": p.task.category, "n_usable": p.n_usable, **layers[name]}
    return torch.cat(rows), labels, tasks


def run_robustness(
    config: RobustnessConfig,
    lm: LoadedModel | None = None,
    progress: Progress | None = None,
    *,
    executor: Executor | None = None,
) -> tuple[dict, torch.Tensor, dict]:
    """The results dict, all vectors (N, H) and their metadata (task, category and layer per row).
    ``executor`` runs the model (default: :func:`analysis_executor`)."""
    started = time.perf_counter()
    check_sizes(len(dict.fromkeys(config.tasks)), config.n_vectors, config.perplexity)
    lm = executor.lm if executor else lm or load_model(config.model, dtype=config.dtype)
    executor = executor or analysis_executor(lm, config)
    vectors, labels, tasks = collect_vectors(executor, config, progress)
    categories = [tasks[t]["category"] for t in labels]
    if progress:
        progress("t-SNE / PCA")
    found = analyse(vectors.numpy(), labels, categories, config.seed, config.perplexity)
    for name, stats in found["distances"].items():
        tasks[name].update(stats)
    results = run_header(lm, "robustness", config.to_dict(), started)
    results.update(
        silhouette={"task": found["silhouette_task"], "category": found["silhouette_category"]},
        pca_explained_variance=found["pca_explained_variance"],
        tasks=tasks,
        points={"task": labels, "category": categories, **found["embedding"]},
    )
    metadata = {"model_id": lm.model_id, "tasks": labels, "categories": categories,
                "layers": [tasks[t]["layer"] for t in labels], "config": config.to_dict()}  # fmt: skip
    return results, vectors, metadata

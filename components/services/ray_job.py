"""A search as a Ray job on a RayCluster: submit it, run it there, hand its results back through S3.

The submitting side (the tune pipeline's search step, ``idap tune --submit``) calls :func:`submit_search`:

1. the space is checked against the recipe, and the dashboard (the Jobs API, ``http://host:8265``) probed
   with one TCP connect, so a bad space or a dead address fails in seconds;
2. the inputs go to ``<exchange>/<job id>/``: ``inputs/data`` (the splits), ``inputs/dense`` (the bundle)
   and ``job.json`` (recipe, space, search settings, the MLflow run to log into);
3. the job ``python -m components.services.ray_job <exchange>/<job id>`` is submitted with a runtime environment
   carrying the settings every pipeline step gets (:func:`components.services.ray_connect.cluster_env`: MLflow tracking URI,
   S3 endpoint, region and bucket, telemetry off). Credentials are never carried: Ray shows a job's runtime
   environment to anyone who can reach the dashboard. The cluster's pods read them from the same Secrets
   the pipeline steps do (infra/base/raycluster.yaml);
4. the job is polled until it ends (its log lines echoed as they come), at most ``timeout_s``: a job still
   running then is stopped. A FAILED or STOPPED job raises :class:`SearchError` naming the job id and its
   last log lines, and nothing is read back;
5. a SUCCEEDED job's results (``results/``, then ``done.json`` last, the commit marker) are downloaded
   whole into ``out_dir`` (staged and swapped in: never half a directory) and read back as the same
   :class:`~components.services.search_results.SearchResult` a local search returns.

On the cluster, :func:`main` downloads the inputs, runs :func:`components.services.tune.run_search` as the job's
driver (it attaches to the cluster through ``RAY_ADDRESS``, which the job supervisor sets) with the Tune
storage on S3 (``<exchange>/<job id>/ray``: trials on other nodes cannot write checkpoints to the driver's
disk) and uploads the results.

Example:
    >>> result = submit_search("http://127.0.0.1:8265", data=Path("data"), dense=Path("dense"), base=Recipe(),
    ...                        space=SearchSpace.load(""), out_dir=Path("results"))      # doctest: +SKIP
    >>> result.winner_recipe.filter.p0                                                     # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from components.services import storage
from components.services.ray_connect import SearchError, cluster_env, probe
from components.services.search_results import SearchResult, read_results
from components.services.search_space import SearchSpace
from components.services.settings import telemetry_off
from components.services.tune import run_search
from idap.prune.config import Recipe

__all__ = ["main", "submit_search", "wait_for_job"]

EXCHANGE_PREFIX = "idap/search-jobs"  # under s3://$IDAP_BUCKET/ unless an exchange URI is given
DEFAULT_TIMEOUT_S = 24 * 3600
LOG_TAIL_LINES = 20
DONE_FILE = "done.json"


def _stderr(text: str) -> None:
    print(text, end="" if text.endswith("\n") else "\n", file=sys.stderr, flush=True)


def dashboard_url(address: str) -> str:
    """The Jobs API address: ``http(s)://host:port`` (the RayCluster head's dashboard port, 8265)."""
    if not address.startswith(("http://", "https://")):
        raise SearchError(f"a Ray job is submitted to the cluster's dashboard, http://host:8265; got {address!r} "
                          "(host:port or ray:// attaches a local driver instead: idap tune --address)")
    return address.rstrip("/")


def exchange_prefix(exchange: str | None, job_id: str) -> str:
    """``<exchange>/<job id>``; the exchange defaults to ``s3://$IDAP_BUCKET/idap/search-jobs``."""
    if not exchange:
        bucket = os.environ.get("IDAP_BUCKET")
        if not bucket:
            raise SearchError("a Ray job exchanges its inputs and results through S3: set IDAP_BUCKET (the "
                              "pipeline steps get it from the idap-object-store ConfigMap) or pass an s3:// exchange")
        exchange = f"s3://{bucket}/{EXCHANGE_PREFIX}"
    if not storage.is_s3(exchange):
        raise SearchError(f"the job exchange must be an s3:// URI the cluster can read, got {exchange!r}")
    storage.parse_s3(exchange)
    return f"{exchange.rstrip('/')}/{job_id}"


def submit_search(
    address: str,
    *,
    data,
    dense,
    base: Recipe,
    space: SearchSpace,
    out_dir: str | os.PathLike,
    search_run_id: str | None = None,
    run_name: str = "tune",
    sources: dict | None = None,
    exchange: str | None = None,
    cpus_per_trial: int = 1,
    max_concurrent: int | None = None,
    seed: int = 0,
    measure_latency: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 2.0,
    echo: Callable[[str], None] | None = _stderr,
) -> SearchResult:
    """Run :func:`components.services.tune.run_search` as a Ray job on the cluster at ``address`` (see the module).

    Args:
        address: the dashboard, ``http://host:8265``.
        data, dense: the splits and the dense bundle, as directories (``save_splits`` / ``save_bundle``) or
            in memory (saved here first).
        out_dir: where the results are downloaded (replaced whole).
        search_run_id: the MLflow run the job logs into (None: the job opens a search run of its own).
        exchange: an s3:// prefix for inputs and results (default ``s3://$IDAP_BUCKET/idap/search-jobs``).
        timeout_s: a job still running after this long is stopped and the call fails.
        echo: called with the job's new log text at every poll (None: silent).

    Raises:
        SearchSpaceError: a bad space. SearchError: the address is unreachable, the job failed, was stopped or
        ran out of time (the message names the job id and holds its last log lines). StorageError: S3.
    """
    from ray.job_submission import JobSubmissionClient

    space.validate(base)  # before S3 or Ray
    if not timeout_s > 0:
        raise SearchError(f"the job timeout must be > 0 seconds, got {timeout_s!r}")
    url = dashboard_url(address)
    probe(url)
    job_id = f"idap-search-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    prefix = exchange_prefix(exchange, job_id)
    with tempfile.TemporaryDirectory(prefix="idap-job-inputs-") as tmp:
        data_dir, dense_dir = _as_directory(data, dense, Path(tmp))
        storage.upload(data_dir, f"{prefix}/inputs/data")
        storage.upload(dense_dir, f"{prefix}/inputs/dense")
        job = {"job_id": job_id, "search_run_id": search_run_id, "run_name": run_name, "sources": sources or {},
               "base_recipe": base.to_dict(), "space": space.to_dict(), "space_source": space.source,
               "cpus_per_trial": cpus_per_trial, "max_concurrent": max_concurrent, "seed": seed,
               "measure_latency": measure_latency}
        (Path(tmp) / "job.json").write_text(json.dumps(job, indent=2, default=str))
        storage.upload(Path(tmp) / "job.json", f"{prefix}/job.json")
    client = JobSubmissionClient(url)
    client.submit_job(entrypoint=f"python -m components.services.ray_job {prefix}", submission_id=job_id,
                      runtime_env={"env_vars": cluster_env()},
                      metadata={"idap.kind": "search", "idap.exchange": prefix,
                                "idap.search_run_id": search_run_id or ""})
    if echo:
        echo(f"submitted Ray job {job_id} to {url} (inputs and results under {prefix})")
    try:
        wait_for_job(client, job_id, timeout_s=timeout_s, poll_s=poll_s, echo=echo)
    except BaseException:
        _stop(client, job_id)  # an interrupted or timed-out step leaves no search running on the cluster
        raise
    return _read_back(prefix, Path(out_dir), job_id)


def wait_for_job(client, job_id: str, *, timeout_s: float, poll_s: float = 2.0,
                 echo: Callable[[str], None] | None = None) -> None:
    """Poll ``job_id`` until it SUCCEEDED; raise :class:`SearchError` when it FAILED, was STOPPED or is still
    running after ``timeout_s`` (the caller stops it), with its last log lines."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    shown = 0
    while True:
        status = client.get_job_status(job_id)
        logs = _logs(client, job_id)
        if echo and len(logs) > shown:
            echo(logs[shown:])
        shown = max(shown, len(logs))
        if status == JobStatus.SUCCEEDED:
            return
        if status in (JobStatus.FAILED, JobStatus.STOPPED):
            # (Ray's message may append the whole log: its first line is the reason, the tail follows below)
            message = ((getattr(client.get_job_info(job_id), "message", None) or "").strip().splitlines() or [""])[0]
            raise SearchError(f"Ray job {job_id} {status.value}" + (f": {message}" if message else "")
                              + f"\nlast log lines of job {job_id}:\n{_tail(logs)}")
        if time.monotonic() >= deadline:
            raise SearchError(f"Ray job {job_id} did not finish within {timeout_s:g} s (still {status.value}); "
                              f"stopping it\nlast log lines of job {job_id}:\n{_tail(logs)}")
        time.sleep(min(poll_s, max(0.05, deadline - time.monotonic())))


def _logs(client, job_id: str) -> str:
    try:
        return client.get_job_logs(job_id) or ""
    except Exception:  # logs are a courtesy; the status decides
        return ""


def _tail(logs: str, n: int = LOG_TAIL_LINES) -> str:
    lines = logs.rstrip().splitlines()[-n:]
    return "\n".join(f"  {line}" for line in lines) if lines else "  (no log output)"


def _stop(client, job_id: str) -> None:
    try:
        client.stop_job(job_id)
    except Exception as error:  # the original failure is what the caller needs to see
        _stderr(f"could not stop Ray job {job_id}: {type(error).__name__}: {error}")


def _as_directory(data, dense, tmp: Path) -> tuple[Path, Path]:
    from idap.bundle import save_bundle
    from idap.data import save_splits

    if isinstance(data, str | os.PathLike):
        data_dir = Path(data)
    else:
        data_dir = tmp / "data"
        save_splits(data, data_dir)
    if isinstance(dense, str | os.PathLike):
        dense_dir = Path(dense)
    else:
        if not hasattr(data, "in_channels"):
            from idap.data import load_splits

            data = load_splits(data_dir)
        dense_dir = save_bundle(dense.cpu(), tmp / "dense", input_shape=(data.in_channels, data.image_size,
                                                                        data.image_size))
    for what, path in (("data splits", data_dir), ("dense bundle", dense_dir)):
        if not Path(path).is_dir():
            raise SearchError(f"the {what} to submit must be a directory, {path} is not")
    return data_dir, Path(dense_dir)


def _read_back(prefix: str, out_dir: Path, job_id: str) -> SearchResult:
    with tempfile.TemporaryDirectory(prefix="idap-job-done-") as tmp:
        try:
            done = json.loads(storage.download(f"{prefix}/{DONE_FILE}", Path(tmp) / DONE_FILE).read_text())
        except storage.StorageError as error:
            raise SearchError(f"Ray job {job_id} SUCCEEDED but left no {DONE_FILE} under {prefix} ({error})") from None
    storage.download(f"{prefix}/results", out_dir)
    return read_results(out_dir, search_run_id=done["search_run_id"], experiment_dir=out_dir.parent)


# ---- on the cluster: the job's entry point ------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m components.services.ray_job s3://.../<job id>``: run the search the prefix holds, upload its results."""
    parser = argparse.ArgumentParser(prog="python -m components.services.ray_job", description=main.__doc__)
    parser.add_argument("prefix", help="the job's s3:// exchange prefix (job.json, inputs/)")
    args = parser.parse_args(argv)
    telemetry_off()
    from idap.bundle import load_bundle
    from idap.data import load_splits

    prefix = args.prefix.rstrip("/")
    work = Path(tempfile.mkdtemp(prefix="idap-search-job-"))
    os.environ.setdefault("IDAP_WORKDIR", str(work))
    job = json.loads(storage.download(f"{prefix}/job.json", work / "job.json").read_text())
    data = load_splits(storage.download(f"{prefix}/inputs/data", work / "data"))
    dense = load_bundle(storage.download(f"{prefix}/inputs/dense", work / "dense"))
    result = run_search(
        data=data, dense=dense, base=Recipe.from_dict(job["base_recipe"]),
        space=SearchSpace.from_dict(job["space"], source=job.get("space_source") or "job.json"),
        experiment_dir=work / "tune" / job["job_id"], search_run_id=job["search_run_id"],
        run_name=job["run_name"], sources={**job["sources"], "job": prefix}, storage=f"{prefix}/ray",
        cpus_per_trial=job["cpus_per_trial"], max_concurrent=job["max_concurrent"], seed=job["seed"],
        measure_latency=job["measure_latency"])
    storage.upload(result.experiment_dir / "results", f"{prefix}/results")
    done = {"job_id": job["job_id"], "search_run_id": result.search_run_id, "trials": result.summary["trials"],
            "winner": result.winner and result.winner["trial_id"]}
    (work / DONE_FILE).write_text(json.dumps(done, indent=2))
    storage.upload(work / DONE_FILE, f"{prefix}/{DONE_FILE}")  # last: the results are complete
    print(f"search done: {done['trials']} -> winner {done['winner'] or 'none (base recipe)'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Submit and schedule pipelines on a Kubeflow Pipelines API (v2beta1) through ``kfp.Client``.

The bearer token comes from the environment (``KFP_TOKEN``) and nowhere else; it is handed to the
client and never printed. Recurring runs use Kubeflow's cron dialect (robfig/cron with a leading
seconds field): a 5-field expression gets ``0`` seconds prepended, anything malformed is refused
here with the field that is wrong, before the cluster sees it.

Example:
    >>> normalize_cron("30 2 * * MON-FRI")
    '0 30 2 * * MON-FRI'
"""

import contextlib
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

TOKEN_ENV = "KFP_TOKEN"


class KfpError(RuntimeError):
    """The Kubeflow Pipelines API refused a request or could not be reached."""


class CronError(ValueError):
    """A cron expression Kubeflow's scheduler would not accept."""


# ---- cron --------------------------------------------------------------------------------------
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# name, lowest, highest, value names (index + offset = value), whether "?" is allowed
_FIELDS = (
    ("second", 0, 59, None, False),
    ("minute", 0, 59, None, False),
    ("hour", 0, 23, None, False),
    ("day-of-month", 1, 31, None, True),
    ("month", 1, 12, (_MONTHS, 1), False),
    ("day-of-week", 0, 6, (_DAYS, 0), True),
)
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_EVERY = re.compile(r"@every\s+((\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+)")
_FORMAT = ("expected 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first "
           "(e.g. '0 30 2 * * *'), or @hourly/@daily/@weekly/@monthly/@yearly/@every <duration>")


def _value(text: str, name: str, low: int, high: int, names) -> int:
    if names is not None and text.upper() in names[0]:
        return names[0].index(text.upper()) + names[1]
    if not text.isdigit():
        raise CronError(f"{name} value {text!r} is not a number" + (f" or one of {names[0]}" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name} value {value} is out of range {low}-{high}")
    return value


def _check_field(text: str, name: str, low: int, high: int, names, question: bool) -> None:
    for item in text.split(","):
        span, _, step = item.partition("/")
        if step and (not step.isdigit() or int(step) < 1):
            raise CronError(f"{name} step {step!r} must be a positive integer")
        if span == "*" or (span == "?" and question):
            continue
        first, dash, last = span.partition("-")
        a = _value(first, name, low, high, names)
        if dash and a > _value(last, name, low, high, names):
            raise CronError(f"{name} range {span!r} runs backwards")


def normalize_cron(expression: str) -> str:
    """Kubeflow's 6-field form of a cron expression (5-field input gets second 0); CronError if invalid."""
    text = " ".join(str(expression).split())
    if text.lower() in _DESCRIPTORS or _EVERY.fullmatch(text):
        return text
    fields = text.split(" ")
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise CronError(f"cron expression {expression!r} has {len(fields) if text else 0} fields; {_FORMAT}")
    try:
        for field, spec in zip(fields, _FIELDS, strict=True):
            _check_field(field, *spec)
    except CronError as exc:
        raise CronError(f"cron expression {expression!r}: {exc}; {_FORMAT}") from None
    return " ".join(fields)


# ---- client ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _api(host: str):
    """Translate the client's errors into one clear KfpError; its chatter goes to stderr, not stdout."""
    import kfp_server_api
    import urllib3

    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    except kfp_server_api.ApiException as exc:
        raise KfpError(f"Kubeflow Pipelines API at {host} answered {exc.status} {exc.reason}: "
                       f"{(exc.body or '').strip()[:300]}") from None
    except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
        raise KfpError(f"cannot reach the Kubeflow Pipelines API at {host}: {type(exc).__name__}: {exc}") from None


def connect(host: str):
    """A ``kfp.Client`` for ``host``, authenticated with $KFP_TOKEN when it is set."""
    import kfp

    if not re.match(r"https?://[^/\s]+", host or ""):
        raise KfpError(f"--host must be an http(s) URL of the Kubeflow Pipelines API, got {host!r}")
    with _api(host):
        return kfp.Client(host=host, existing_token=os.environ.get(TOKEN_ENV) or None)


def _compiled(pipeline, directory: str) -> str:
    from kfp import compiler

    path = str(Path(directory) / f"{pipeline.name}.yaml")
    compiler.Compiler().compile(pipeline, path)
    return path


def submit(pipeline, *, host: str, arguments: dict, experiment: str, run_name: str | None = None,
           namespace: str | None = None, service_account: str | None = None) -> dict:
    """Compile ``pipeline`` and start one run of it in ``experiment`` (created when missing).

    Args:
        service_account: the Kubernetes service account the run's pods use (``idap-pipeline-runner`` from
            infra/); None leaves the cluster's default (on multi-user Kubeflow, the Profile's).
    """
    client = connect(host)
    with tempfile.TemporaryDirectory() as tmp, _api(host):
        result = client.create_run_from_pipeline_package(
            _compiled(pipeline, tmp), arguments=arguments, run_name=run_name, experiment_name=experiment,
            namespace=namespace, service_account=service_account)
    run_id = result.run_id
    return {"run_id": run_id, "pipeline": pipeline.name, "experiment": experiment,
            "url": f"{host.rstrip('/')}/#/runs/details/{run_id}"}


def schedule(pipeline, *, host: str, cron: str, arguments: dict, name: str, experiment: str,
             max_concurrency: int = 1, namespace: str | None = None, service_account: str | None = None) -> dict:
    """Create a recurring run of ``pipeline`` on ``cron`` (validated, 6-field) in ``experiment``
    (``service_account`` as for :func:`submit`)."""
    cron = normalize_cron(cron)
    if max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be >= 1, got {max_concurrency}")
    client = connect(host)
    with tempfile.TemporaryDirectory() as tmp, _api(host):
        exp = client.create_experiment(name=experiment, namespace=namespace)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, cron_expression=cron, max_concurrency=max_concurrency,
            params=arguments, pipeline_package_path=_compiled(pipeline, tmp), no_catchup=True,
            service_account=service_account)
    return {"recurring_run_id": job.recurring_run_id, "name": name, "pipeline": pipeline.name, "cron": cron,
            "max_concurrency": max_concurrency, "experiment": experiment, "experiment_id": exp.experiment_id}

"""`adrank triton start|stop|status|load|repo`: the bundled tritonserver as a local service.

`start` writes each model's config.pbtxt (target `auto`: the bundled server has only the python
backend, so `python`), launches the server detached, waits until the models are ready and records
pid and ports in `<state-dir>/triton.json`; `stop` and `status` read that record from any process.
`load` re-writes a model's config (picking up new version folders) and reloads it in place: versions
already loaded keep serving until the new set is ready. `repo` only writes the config (e.g. with
`--target native` for the official Triton container).

    adrank triton start --repository runs/demo/model_repository --model vm
    adrank serve --backend triton --triton-url 127.0.0.1:<grpc port printed above>
    adrank triton stop
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from serving.triton import launcher

DEFAULT_REPOSITORY = "runs/demo/model_repository"


def _write_configs(repository: str, models: list[str], target: str, max_batch_size: int, instances: int,
                   backend_dir: str | Path | None, versions: str | None = None) -> str:
    """`auto` lists the backend folder of the server that will load the model: for start/load the
    one the launcher builds for the bundled server (python only), for `repo` --backend-dir,
    $TRITON_BACKEND_DIR or the official container's /opt/tritonserver/backends."""
    from exporters.triton_repo import TritonModelConfig, resolve_target, write_triton_model

    target = resolve_target(target, backend_dir)
    config = TritonModelConfig(max_batch_size=max_batch_size, instance_count=instances)
    for name in models:
        chosen = [int(v) for v in versions.split(",")] if versions else None
        path = write_triton_model(repository, name, versions=chosen, target=target, config=config)
        print(f"wrote {path} (target {target})")
    return target


def _bundled_backends(state_dir: str) -> Path:
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    return launcher.backend_directory(Path(state_dir).resolve(), launcher.bundled_server())


def _models(a: argparse.Namespace) -> list[str]:
    if a.model:
        return list(a.model)
    from serving.model_repository import model_names

    return model_names(a.repository)


def _start(a: argparse.Namespace) -> int:
    models = _models(a)
    if not models:
        print(f"error: no exported model in {a.repository}", file=sys.stderr)
        return 2
    if not a.no_write:
        _write_configs(a.repository, models, a.target, a.max_batch_size, a.instances, _bundled_backends(a.state_dir),
                       a.versions)
    handle = launcher.start(a.repository, models=models, grpc_port=a.grpc_port, http_port=a.http_port,
                            metrics_port=a.metrics_port, log_file=a.log_file, state_dir=a.state_dir,
                            ready_timeout_s=a.timeout)
    print(f"tritonserver pid {handle.pid} ready: grpc {handle.grpc_url}, http {handle.http_url}, "
          f"metrics {handle.metrics_url}; models {list(handle.models)}; log {handle.log_file}")
    print(f"next: adrank serve --backend triton --triton-url {handle.grpc_url} --repository {a.repository}")
    return 0


def _stop(a: argparse.Namespace) -> int:
    stopped = launcher.stop(a.state_dir)
    print("tritonserver stopped" if stopped else f"no tritonserver recorded in {a.state_dir}")
    return 0


def _status(a: argparse.Namespace) -> int:
    handle = launcher.status(a.state_dir)
    if handle is None:
        print(f"no tritonserver running (state dir {a.state_dir})")
        return 1
    print(json.dumps({**asdict(handle), "grpc_url": handle.grpc_url, "http_url": handle.http_url}, indent=2))
    return 0


def _load(a: argparse.Namespace) -> int:
    handle = launcher.status(a.state_dir)
    if handle is None:
        raise launcher.TritonNotRunning(f"no tritonserver recorded in {a.state_dir}: run `adrank triton start`")
    models = a.model or list(handle.models)
    if not a.no_write:
        _write_configs(handle.repository, models, a.target, a.max_batch_size, a.instances,
                       _bundled_backends(a.state_dir), a.versions)
    for name in models:
        launcher.load_model(handle, name, timeout=a.timeout)
        print(f"loaded {name}")
    return 0


def _repo(a: argparse.Namespace) -> int:
    _write_configs(a.repository, _models(a), a.target, a.max_batch_size, a.instances, a.backend_dir, a.versions)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adrank triton", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    for name, func, text in (("start", _start, "write configs, launch tritonserver, wait until ready"),
                             ("stop", _stop, "SIGINT, then SIGKILL after 15 s; remove shm files and state"),
                             ("status", _status, "print the running server's pid and ports (exit 1 if none)"),
                             ("load", _load, "re-write configs and (re)load models into the running server"),
                             ("repo", _repo, "only write config.pbtxt (+ model.py) for exported models")):
        sp = sub.add_parser(name, help=text)
        sp.set_defaults(func=func)
        sp.add_argument("--state-dir", default=launcher.DEFAULT_STATE_DIR)
        if name in ("start", "load", "repo"):
            if name != "load":
                sp.add_argument("--repository", default=DEFAULT_REPOSITORY)
            sp.add_argument("--model", action="append", help="repeatable; default: every exported model")
            sp.add_argument("--target", default="auto", choices=("auto", "python", "native"))
            sp.add_argument("--max-batch-size", type=int, default=1024)
            sp.add_argument("--instances", type=int, default=1)
            sp.add_argument("--versions", default=None,
                            help="comma-separated versions to serve, e.g. 2,3 (default: every version folder)")
            sp.add_argument("--no-write", action="store_true", help="use the config.pbtxt files as they are")
            sp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness / loads")
        if name == "repo":
            sp.add_argument("--backend-dir", default=None, help="the target server's backend folder, for --target auto")
        if name == "start":
            for port in ("grpc", "http", "metrics"):
                sp.add_argument(f"--{port}-port", type=int, default=None, help="default: a free port")
            sp.add_argument("--log-file", default=None, help="default: <state-dir>/tritonserver.log")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from exporters.triton_repo import TritonRepoError

    try:
        return int(a.func(a) or 0)
    except (launcher.TritonLaunchError, TritonRepoError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Static checks of ``infra/``: Docker does not run on the machines this project is tested on, so
these tests read the Dockerfile, the compose file, ``.env.example`` and the ignore file, and check
that every command they start exists in this checkout (``radstore`` via its argparse parser,
``prefect`` and ``dask`` via their console scripts' ``--help``)."""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
DOCKERFILE = INFRA / "Dockerfile"
DOCKERIGNORE = INFRA / "Dockerfile.dockerignore"
ENV_EXAMPLE = INFRA / ".env.example"
README = INFRA / "README.md"
PYPROJECT = ROOT / "pyproject.toml"

REQUIRED_SERVICES = {
    "postgres",
    "prefect-server",
    "prefect-worker",
    "radstore-serve",
    "dask-scheduler",
    "dask-worker",
    "minio",
    "minio-init",
}
RADSTORE_SERVICES = ("prefect-worker", "radstore-serve", "dask-scheduler", "dask-worker")  # built from infra/Dockerfile
GPU_SERVICES = ("prefect-worker", "radstore-serve", "dask-worker")
PREFECT_CLIENTS = ("prefect-worker", "radstore-serve", "dask-worker")  # run flows/tasks that report to the API
REQUIRED_RADSTORE_SUBCOMMANDS = {"serve", "study"}  # flows/cli.py; `serve` is what radstore-serve runs
POOL = "radstore-gpu"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ...; "$${...}" is an escaped literal.
VAR_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
BARE_VAR_RE = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


# ---------------------------------------------------------------- helpers


def _defaults(value: str) -> str:
    """A compose string with every ``${VAR:-default}`` replaced by its default."""
    return VAR_RE.sub(lambda m: m.group(3) if m.group(2) in ("-", ":-") else m.group(0), value)


def _argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _container_ports(service: dict) -> set[int]:
    ports = set()
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            ports.add(int(p["target"]))
        else:
            ports.add(int(_defaults(str(p)).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _volume_targets(service: dict) -> dict[str, str]:
    """Container path -> source (named volume or host path) of a service's volumes."""
    out = {}
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out[v["target"]] = str(v.get("source", ""))
        else:
            parts = _defaults(v).split(":")
            out[parts[1] if len(parts) > 1 else parts[0]] = parts[0]
    return out


def _option_value(argv: list[str], option: str) -> str | None:
    for i, a in enumerate(argv):
        if a == option and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for instr, args in _dockerfile():
        if instr == "ENV":
            for tok in shlex.split(args):
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    env[k] = v
    return env


def _dockerfile_cmd() -> list[str]:
    cmds = [args for instr, args in _dockerfile() if instr == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    return json.loads(cmds[-1])  # exec form, so that compose's `command:` replaces it cleanly


def _readme_commands() -> list[list[str]]:
    """argv of every prefect/dask/radstore invocation in the README's code blocks."""
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", README.read_text(), flags=re.DOTALL)
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0]
            toks = shlex.split(line) if line.strip() else []
            for i, t in enumerate(toks):
                if t in ("prefect", "dask", "radstore"):
                    out.append(toks[i:])
                    break
    return out


def _pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def _pin(name: str) -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(name)}==([\w.+-]+)", dep.replace(" ", ""))
        if m:
            return m.group(1)
    raise AssertionError(f"pyproject.toml does not pin {name}==")


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "compose.yaml has no services mapping"
    return doc


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _all_commands(services: dict) -> list[list[str]]:
    cmds = [_argv(s["command"]) for s in services.values() if "command" in s]
    return cmds + [_dockerfile_cmd()] + _readme_commands()


# ---------------------------------------------------------------- compose


def test_compose_has_every_service(services):
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"compose.yaml lacks services {sorted(missing)}"


def test_every_service_names_an_image_or_a_build_of_the_dockerfile(services):
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        build = svc.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (INFRA / build.get("context", ".")).resolve()
        dockerfile = (context / build.get("dockerfile", "Dockerfile")).resolve()
        assert dockerfile == DOCKERFILE.resolve(), f"{name}: builds {dockerfile}, not infra/Dockerfile"
        assert context == ROOT, f"{name}: build context {context} is not the repository root"
    for name in RADSTORE_SERVICES:
        assert services[name].get("build"), f"{name} must be built from infra/Dockerfile"
    images = {_defaults(services[n]["image"]) for n in RADSTORE_SERVICES if services[n].get("image")}
    assert len(images) <= 1, f"radstore services tag different images: {images}"


def test_third_party_images(services):
    expect = {"postgres": "postgres:16", "prefect-server": "prefecthq/prefect:3", "minio": "minio/minio", "minio-init": "minio/mc"}
    for name, prefix in expect.items():
        image = _defaults(str(services[name].get("image", "")))
        assert image.startswith(prefix), f"{name}: image {image!r}, expected {prefix}..."
    assert "python3.11" in _defaults(services["prefect-server"]["image"]), "Prefect server: use the python3.11 image, as the workers"


def test_prefect_server_uses_postgres(services):
    srv, pg = services["prefect-server"], services["postgres"]
    assert _argv(srv["command"])[:3] == ["prefect", "server", "start"]
    assert _option_value(_argv(srv["command"]), "--host") == "0.0.0.0", "server must listen on all interfaces"
    url = urlsplit(_defaults(_env(srv)["PREFECT_API_DATABASE_CONNECTION_URL"]))
    pg_env = {k: _defaults(v) for k, v in _env(pg).items()}
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == "postgres" and (url.port or 5432) == 5432
    assert url.username == pg_env["POSTGRES_USER"] and url.password == pg_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == pg_env["POSTGRES_DB"]
    assert srv["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert 4200 in _container_ports(srv)
    assert any(t == "/var/lib/postgresql/data" for t in _volume_targets(pg)), "postgres data is not on a volume"


def test_depends_on_and_healthchecks_are_consistent(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        deps = {d: {} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            cond = (spec or {}).get("condition", "service_started")
            if cond == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{name} waits for {dep} healthy, it has no healthcheck"
            if cond == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is a one-shot job: restart must be 'no'"
    for name in ("postgres", "minio", "prefect-server"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_radstore_services_reach_prefect_and_s3(services):
    minio, init = services["minio"], services["minio-init"]
    init_cmd = " ".join(_argv(init.get("command", [])))
    bucket = re.search(r"mc mb (?:--\S+ )*\w+/([\w.-]+)", init_cmd)
    assert bucket, "minio-init does not create a bucket with `mc mb`"
    alias_url = re.search(r"mc alias set \w+ (\S+)", init_cmd)
    assert alias_url, "minio-init does not set an mc alias"
    m_env = _env(minio)
    assert _argv(minio["command"])[:2] == ["server", "/data"]
    assert {9000, 9001} <= _container_ports(minio)
    for name in RADSTORE_SERVICES:
        env = _env(services[name])
        if name in PREFECT_CLIENTS:
            assert env.get("PREFECT_API_URL") == "http://prefect-server:4200/api", name
        endpoint = urlsplit(env.get("AWS_ENDPOINT_URL", ""))
        assert endpoint.hostname in services and endpoint.hostname == "minio", f"{name}: AWS_ENDPOINT_URL {endpoint.geturl()!r}"
        assert endpoint.port in _container_ports(minio) and endpoint.port == 9000, name
        assert alias_url.group(1) == env["AWS_ENDPOINT_URL"], "minio-init and the workers use different endpoints"
        store = urlsplit(env.get("RADSTORE_STORE", ""))
        assert store.scheme == "s3" and store.netloc == bucket.group(1), f"{name}: RADSTORE_STORE not in the created bucket"
        assert env.get("AWS_ACCESS_KEY_ID") == m_env["MINIO_ROOT_USER"], f"{name}: S3 key is not MinIO's"
        assert env.get("AWS_SECRET_ACCESS_KEY") == m_env["MINIO_ROOT_PASSWORD"], f"{name}: S3 secret is not MinIO's"
        deps = services[name].get("depends_on") or {}
        if name != "dask-scheduler":
            assert "minio-init" in deps, f"{name} may start before the bucket exists"


def test_dask_addresses(services):
    sched, worker = services["dask-scheduler"], services["dask-worker"]
    s_argv, w_argv = _argv(sched["command"]), _argv(worker["command"])
    assert s_argv[:2] == ["dask", "scheduler"]
    assert w_argv[:2] == ["dask", "worker"]
    port = int(_option_value(s_argv, "--port") or 8786)
    dash = int((_option_value(s_argv, "--dashboard-address") or ":8787").rsplit(":", 1)[-1])
    addr = urlsplit(w_argv[2])
    assert addr.scheme == "tcp" and addr.hostname == "dask-scheduler" and addr.port == port == 8786
    assert {port, dash} <= _container_ports(sched) and dash == 8787
    assert worker.get("deploy", {}).get("replicas") == 2


def test_prefect_worker_and_serve_commands(services):
    argv = _argv(services["prefect-worker"]["command"])
    assert argv[:3] == ["prefect", "worker", "start"]
    assert _option_value(argv, "--pool") == POOL and _option_value(argv, "--type") == "process"
    serve = _argv(services["radstore-serve"]["command"])
    assert serve[:2] == ["radstore", "serve"]
    config = _option_value(serve, "--config")
    assert config, "radstore serve needs --config"
    mounted = _volume_targets(services["radstore-serve"])
    assert any(config == t or config.startswith(t.rstrip("/") + "/") for t in mounted), f"{config} is on no mounted volume"


def test_gpu_reservations(services):
    for name in GPU_SERVICES:
        devices = services[name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
        assert any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices), (
            f"{name} reserves no NVIDIA GPU"
        )


def test_weights_volume_and_offline_hub(compose, services):
    weights_dir = _dockerfile_env().get("RADSTORE_WEIGHTS_DIR")
    assert weights_dir == "/weights"
    declared = set(compose.get("volumes") or {})
    for name in GPU_SERVICES:
        env, mounts = _env(services[name]), _volume_targets(services[name])
        assert env.get("RADSTORE_WEIGHTS_DIR", weights_dir) == weights_dir, name
        assert weights_dir in mounts, f"{name}: nothing mounted at {weights_dir}"
        assert env.get("HF_HUB_OFFLINE", _dockerfile_env().get("HF_HUB_OFFLINE")) == "1", name
    for name, svc in services.items():
        for source in _volume_targets(svc).values():
            if not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name}: volume {source!r} is not declared under top-level volumes"


def test_variables_have_defaults_or_are_in_env_example():
    text = COMPOSE.read_text()
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            example[k.strip()] = v.strip()
    stripped = VAR_RE.sub("", text).replace("$$", "")
    assert not BARE_VAR_RE.findall(stripped), f"unbraced compose variables: {BARE_VAR_RE.findall(stripped)}"
    used = {}
    for m in VAR_RE.finditer(text):
        var, op, default = m.groups()
        if op in ("-", ":-"):
            used.setdefault(var, set()).add(default)
        else:
            assert var in example, f"${{{var}}} has no default and is not in .env.example"
            used.setdefault(var, set())
    for var, defaults in used.items():
        assert len(defaults) <= 1, f"${{{var}}} has different defaults: {defaults}"
    for var, value in example.items():
        assert var in used, f".env.example sets {var}, which compose.yaml never uses"
        if used[var]:
            assert value == next(iter(used[var])), f"{var}: .env.example says {value!r}, compose default {used[var]}"


# ---------------------------------------------------------------- Dockerfile


def _cuda_of_base() -> tuple[int, int]:
    froms = [args.split()[0] for instr, args in _dockerfile() if instr == "FROM"]
    assert froms, "Dockerfile has no FROM"
    base = froms[-1]
    m = re.fullmatch(r"(?:docker\.io/|nvcr\.io/)?nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-(?:cudnn\d*-)?runtime-\S+", base) or re.fullmatch(
        r"pytorch/pytorch:\S*-cuda(\d+)\.(\d+)-\S*runtime", base
    )
    assert m, f"final stage FROM {base!r} is not a CUDA runtime image"
    return int(m.group(1)), int(m.group(2))


def test_dockerfile_cuda_base():
    assert _cuda_of_base() >= (12, 0)


def test_dockerfile_cuda_matches_torch_wheel():
    try:
        version_py = Path(importlib.metadata.distribution("torch").locate_file("torch/version.py")).read_text()
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torch is not installed in this environment")
    m = re.search(r"^cuda(?:: \S+)? = '(\d+)\.(\d+)'", version_py, flags=re.MULTILINE)
    if not m:
        pytest.skip("the installed torch is a CPU build; its CUDA version is unknown here")
    assert _cuda_of_base()[0] == int(m.group(1)), f"base image CUDA {_cuda_of_base()} vs torch's CUDA {m.group(1)}.{m.group(2)}"


def test_dockerfile_python_311():
    runs = " ".join(args for instr, args in _dockerfile() if instr == "RUN")
    assert re.search(r"--python 3\.11\b|python3\.11\b", runs), "the image does not set up Python 3.11"
    from packaging.specifiers import SpecifierSet

    assert "3.11" in SpecifierSet(_pyproject()["project"]["requires-python"])


def test_dockerfile_installs_pinned_torch_then_the_package():
    steps = _dockerfile()
    copies = {args.split()[-1] for instr, args in steps if instr == "COPY" and args.split()[0] == "."}
    assert copies, "the Dockerfile never copies the build context (COPY . DEST)"
    torch_at = pkg_at = None
    for i, (instr, args) in enumerate(steps):
        if instr != "RUN" or "pip install" not in args:
            continue
        toks = shlex.split(args)
        if f"torch=={_pin('torch')}" in toks and f"torchvision=={_pin('torchvision')}" in toks:
            torch_at = i if torch_at is None else torch_at
        if copies & set(toks):
            pkg_at = i
    assert torch_at is not None, f"no `pip install torch=={_pin('torch')} torchvision=={_pin('torchvision')}`"
    assert pkg_at is not None, f"no `pip install` of the copied repository ({copies})"
    assert torch_at < pkg_at, "install the pinned torch before the package, so pip keeps it"


def test_dockerfile_env_user_and_volume():
    steps, env = _dockerfile(), _dockerfile_env()
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert env.get("RADSTORE_WEIGHTS_DIR") == "/weights"
    volumes = [v for instr, args in steps if instr == "VOLUME" for v in (json.loads(args) if args.startswith("[") else args.split())]
    assert "/weights" in volumes
    users = [args.split(":")[0] for instr, args in steps if instr == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert any(instr == "RUN" and "chown" in args and users[-1] in args and "/weights" in args for instr, args in steps), (
        f"/weights is not owned by {users[-1]}: a fresh named volume copies that ownership"
    )


def test_dockerfile_default_command_is_the_prefect_worker(services):
    steps = _dockerfile()
    assert not [a for i, a in steps if i == "ENTRYPOINT"], "an ENTRYPOINT would prefix compose's commands"
    cmd = _dockerfile_cmd()
    assert cmd[:3] == ["prefect", "worker", "start"] and _option_value(cmd, "--pool") == POOL
    assert _option_value(cmd, "--pool") == _option_value(_argv(services["prefect-worker"]["command"]), "--pool")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Approximation of Docker's .dockerignore matching (later patterns win, ! re-includes)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw[1:] if neg else raw
        pat = pat.strip().strip("/")
        pats = [pat, pat[3:], "*/" + pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatchcase(p, q) for p in prefixes for q in pats):
            ignored = not neg
    return ignored


def test_dockerignore_keeps_the_package_and_drops_the_bulk():
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for bulky in (".venv/bin/python", ".git/HEAD", "demo/store/store.json", "featurestore/__pycache__/x.pyc"):
        assert _ignored(bulky, patterns), f"{bulky} would be sent to the Docker daemon"
    project = _pyproject()
    needed = ["pyproject.toml", project["project"]["readme"]]
    for pkg in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed.append(f"{pkg.rstrip('*').rstrip('.')}/__init__.py")
    for path in needed:
        assert (ROOT / path).exists(), f"{path} does not exist"
        assert not _ignored(path, patterns), f"{path} is ignored, but `pip install` needs it"


# ---------------------------------------------------------------- the commands exist


def test_pyproject_declares_the_radstore_script():
    target = _pyproject()["project"]["scripts"].get("radstore")
    assert target, "[project.scripts] has no radstore"
    module, _, func = target.partition(":")
    mod = __import__(module, fromlist=[func])
    assert callable(getattr(mod, func))


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from flows.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("radstore's parser has no subcommands")


def test_radstore_subcommands_exist(services):
    subs = _subcommands()
    used = {argv[1] for argv in _all_commands(services) if argv[0] == "radstore" and len(argv) > 1}
    missing = (REQUIRED_RADSTORE_SUBCOMMANDS | used) - set(subs)
    assert not missing, f"radstore has no subcommand(s) {sorted(missing)} (has {sorted(subs)})"
    for argv in _all_commands(services):
        if argv[0] == "radstore" and len(argv) > 1:
            options = set(subs[argv[1]]._option_string_actions)
            unknown = {a.split("=")[0] for a in argv[2:] if a.startswith("--")} - options
            assert not unknown, f"`radstore {argv[1]}` has no option(s) {sorted(unknown)}"


@pytest.mark.parametrize("exe,depth", [("prefect", 2), ("dask", 1)])
def test_prefect_and_dask_commands_exist(services, exe, depth, tmp_path):
    """Every `prefect ...`/`dask ...` the stack runs (compose, Dockerfile CMD, README) answers --help
    and knows each --option used. The Prefect server runs in the prefecthq image; its CLI is the
    same Prefect 3 as this environment's."""
    script = Path(sys.executable).parent / exe
    if not script.exists():
        pytest.skip(f"{script} is absent: install the project (`make venv`) to check `{exe}` commands")
    commands = [argv for argv in _all_commands(services) if argv[0] == exe]
    assert commands, f"no {exe} command found in infra/ (the test's parser is broken?)"
    for argv in commands:
        sub = argv[1 : 1 + depth]
        res = subprocess.run(
            [str(script), *sub, "--help"],
            check=False,
            capture_output=True,
            text=True,
            timeout=180,
            env={"PATH": str(script.parent), "COLUMNS": "200", "NO_COLOR": "1", "PREFECT_HOME": str(tmp_path)},
        )
        assert res.returncode == 0, f"`{exe} {' '.join(sub)} --help` failed: {res.stderr[-500:]}"
        for opt in {a.split("=")[0] for a in argv[1 + depth :] if a.startswith("--")}:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", res.stdout), f"`{exe} {' '.join(sub)}` has no {opt}"


def test_repository_configs_match_the_stack(services):
    """configs/study.yaml (the study as published) runs on this stack; prefect.yaml, where there
    is one, deploys to the pool the worker polls."""
    study = ROOT / "configs" / "study.yaml"
    if not study.exists():
        pytest.skip("configs/study.yaml is absent")
    cfg = yaml.safe_load(study.read_text())
    scheduler = _argv(services["dask-worker"]["command"])[2]
    assert cfg.get("runner") == f"dask:{scheduler}", f"configs/study.yaml runner {cfg.get('runner')!r}, scheduler {scheduler}"
    env = _env(services["radstore-serve"])
    assert urlsplit(cfg["store"]).netloc == urlsplit(env["RADSTORE_STORE"]).netloc, "study store is not in the stack's bucket"
    prefect_yaml = ROOT / "prefect.yaml"
    if prefect_yaml.exists():
        for dep in yaml.safe_load(prefect_yaml.read_text()).get("deployments") or []:
            pool = (dep.get("work_pool") or {}).get("name")
            assert pool in (None, POOL), f"prefect.yaml deploys {dep.get('name')} to {pool}, the worker polls {POOL}"


def test_readme_for_the_data_engineer():
    text = README.read_text()
    assert "Docker does not run on the machines this project is developed and tested on" in text
    assert "docker compose -f infra/compose.yaml --env-file infra/.env up -d" in text
    assert any(
        a[:3] == ["prefect", "work-pool", "create"] and POOL in a and _option_value(a, "--type") == "process" for a in _readme_commands()
    ), "README does not show how to create the work pool"
    for folder in ("rad-dino", "chexagent", "biomedclip"):
        assert "/weights/" in text and f"--local-dir models/{folder}" in text, f"README: no weights folder {folder}"
    assert "runner: dask:tcp://dask-scheduler:8786" in text and "s3://radstore/store" in text

"""Docker files kept honest without a Docker engine.

- Both Dockerfiles lint clean with hadolint (the PyPI-shipped binary, `test` extra), with no rule silenced but the
  one each file justifies.
- docker/compose.yaml validates against the Compose specification's JSON schema (as vendored by check-jsonschema)
  and has the services, profiles, build files, volumes, ports and GPU reservation the README documents.
- Every command an image or a compose service runs is a real CLI of this project: its `--help` exits 0 in the test
  environment and lists every flag the command passes; the images' serve command (as `--dry-run`) refuses 0.0.0.0
  without QWEN_W4_API_KEY and builds the vLLM command with it.
- One source of truth for versions: the GPU image's tag equals the `vllm==` pin in constraints.txt, no Dockerfile
  names a package version of its own, and they install through constraints.txt exactly as the Makefile does.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile.gpu", "cpu": DOCKER / "Dockerfile.cpu"}
BIN = Path(sys.executable).parent
# Rules a Dockerfile may silence with a `# hadolint ignore=` line, and why.
ALLOWED_IGNORES = {
    # apt packages come from the base image's Debian release; pinning their versions here would be a second
    # version list that breaks on every Debian point release.
    "cpu": {"DL3008"},
    "gpu": set(),
}
SERVICES = {"serve-gpu": ["gpu"], "serve-gpus": ["gpus"], "serve-cpu": ["cpu"], "demo": ["gpu", "gpus", "cpu"],
            "quantize": ["tools"], "bench": ["tools"]}


# ---------------------------------------------------------------- helpers

def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found beside {sys.executable}: install the test extra "
                    "(pip install -c constraints.txt -e '.[test]')")
    return path


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{dockerfile.name}: trailing line continuation"
    return out


def _one(dockerfile: Path, instruction: str) -> str:
    found = [args for word, args in _instructions(dockerfile) if word == instruction]
    assert len(found) == 1, f"{dockerfile.name}: expected one {instruction}, found {len(found)}"
    return found[0]


def _exec_form(dockerfile: Path, instruction: str) -> list[str]:
    args = _one(dockerfile, instruction)
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"{dockerfile.name}: {instruction} must use the exec (JSON) form, got {args}")
    assert isinstance(value, list) and all(isinstance(a, str) for a in value)
    return value


def _env(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in _instructions(dockerfile):
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return pins


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


_INTERP = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def _defaults(value: str) -> str:
    """A compose value with every `${VAR:-default}` replaced by its default (what runs when VAR is unset)."""
    return _INTERP.sub(lambda m: m.group(2) or "", value)


def _service_argv(name: str) -> list[str]:
    """What a compose service runs: its entrypoint and command, falling back to its Dockerfile's."""
    svc = _compose()["services"][name]
    dockerfile = REPO / "docker" / Path(svc["build"]["dockerfile"]).name
    entrypoint = svc.get("entrypoint", _exec_form(dockerfile, "ENTRYPOINT"))
    command = svc.get("command", _exec_form(dockerfile, "CMD"))
    assert isinstance(entrypoint, list) and isinstance(command, list), f"{name}: use list form for entrypoint/command"
    return [_defaults(str(a)) for a in entrypoint + command]


def _dockerfile_argv(kind: str) -> list[str]:
    path = DOCKERFILES[kind]
    return _exec_form(path, "ENTRYPOINT") + _exec_form(path, "CMD")


def _flags(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def _help(module: str) -> str:
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, (f"`python -m {module} --help` exited {r.returncode}:\n"
                               f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def _packages() -> list[str]:
    """The project's top-level packages: pyproject's `packages.find` include patterns (`core*` -> core)."""
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    pkgs = [pat.rstrip("*") for pat in include]
    assert pkgs and all((REPO / p / "__init__.py").is_file() for p in pkgs), include
    return pkgs


def _assert_real_cli(argv: list[str], where: str) -> None:
    assert argv[:2] == ["python", "-m"] and len(argv) >= 3, f"{where}: runs {argv}, not `python -m <command>`"
    module = argv[2]
    assert module in _packages(), f"{where}: {module} is not a project package"
    text = _help(module)
    missing = [f for f in _flags(argv[3:]) if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"{where}: `python -m {module} --help` does not list {missing}:\n{text}"


# ---------------------------------------------------------------- Dockerfiles

@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_clean(kind, tmp_path):
    path = DOCKERFILES[kind]
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")  # any finding fails; no repository config can relax it
    r = subprocess.run([_tool("hadolint"), "--config", str(config), "--no-color", "-f", "json", str(path)],
                       check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    findings = json.loads(r.stdout or "[]")
    assert r.returncode == 0 and not findings, (
        f"hadolint {path.name}:\n" + "\n".join(f"  line {f['line']}: {f['code']} {f['message']}" for f in findings)
        + r.stderr)
    ignored = set()
    for line in path.read_text().splitlines():
        m = re.match(r"\s*#\s*hadolint\s+ignore=(\S+)", line)
        if m:
            ignored |= set(m.group(1).split(","))
    extra = ignored - ALLOWED_IGNORES[kind]
    assert not extra, f"{path.name} silences {extra}: justify it in ALLOWED_IGNORES or fix the finding"


def test_hadolint_finds_problems(tmp_path):
    """The lint above is not vacuous: the same binary flags an untagged base and an unpinned pip install."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install requests\n")
    r = subprocess.run([_tool("hadolint"), "--no-color", "-f", "json", str(bad)], capture_output=True, text=True,
                       timeout=120, check=False)
    codes = {f["code"] for f in json.loads(r.stdout)}
    assert r.returncode != 0 and {"DL3006", "DL3013"} <= codes, codes


def test_gpu_base_image_tag_equals_vllm_pin():
    pins = _constraints()
    base = _one(DOCKERFILES["gpu"], "FROM")
    m = re.fullmatch(r"vllm/vllm-openai:v(\S+)", base)
    assert m, f"Dockerfile.gpu must build FROM vllm/vllm-openai:v<version>, got {base}"
    assert m.group(1) == pins["vllm"], f"image tag v{m.group(1)} != constraints.txt vllm=={pins['vllm']}"
    # the gpu extra is what the image installs on top, and it is vllm
    assert any(re.match(r"vllm\b(?!-)", d) for d in _pyproject()["project"]["optional-dependencies"]["gpu"])


def test_cpu_base_python_satisfies_requires_python():
    base = _one(DOCKERFILES["cpu"], "FROM")
    m = re.fullmatch(r"python:(\d+\.\d+)-slim", base)
    assert m, f"Dockerfile.cpu must build FROM python:<X.Y>-slim, got {base}"
    spec = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert m.group(1) + ".0" in spec, f"python {m.group(1)} does not satisfy requires-python {spec}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_names_no_versions_of_its_own(kind):
    path = DOCKERFILES[kind]
    version = re.compile(r"[A-Za-z0-9][\w.\-\[\],]*\s*(===|==|~=|>=|<=|!=|>|<)\s*v?\d")
    for word, args in _instructions(path):
        if word == "FROM":
            continue  # the base tag: the one version a Dockerfile holds (checked against the pins above)
        assert not version.search(args), f"{path.name}: {word} {args} names a version; pins live in constraints.txt"
        for m in re.finditer(r"pip install ([^&;|]*)", args):
            cmd = m.group(1)
            assert re.search(r"(^|\s)-c\s", cmd), f"{path.name}: `pip install {cmd}` bypasses constraints.txt"
            targets = [t for t in shlex.split(cmd) if not t.startswith("-")
                       and t not in {"-c"} and not t.endswith(".txt")]
            assert all(t.startswith(".") for t in targets), f"{path.name}: installs {targets}, not the project"


def test_installs_follow_the_makefile():
    """GPU: the same constraints filter as `make install-gpu`; CPU: `make venv` itself. Extras exist in pyproject."""
    makefile = (REPO / "Makefile").read_text()
    extras = _pyproject()["project"]["optional-dependencies"]
    gpu = " ".join(a for w, a in _instructions(DOCKERFILES["gpu"]) if w == "RUN")
    filt = re.search(r"grep -vE '([^']+)' constraints\.txt", gpu)
    assert filt, "Dockerfile.gpu must filter constraints.txt as `make install-gpu` does"
    assert f"grep -vE '{filt.group(1)}' constraints.txt" in makefile, "the GPU filter differs from the Makefile's"
    gpu_extras = re.search(r'-e "\.\[([\w,]+)\]"', gpu)
    assert gpu_extras and "gpu" in gpu_extras.group(1).split(",")
    cpu = " ".join(a for w, a in _instructions(DOCKERFILES["cpu"]) if w == "RUN")
    make = re.search(r"\bmake venv\b([^&;]*)", cpu)
    assert make, "Dockerfile.cpu must install through `make venv` (the one install recipe)"
    cpu_extras = re.search(r"EXTRAS=([\w,]+)", make.group(1))
    assert cpu_extras and "cpu" in cpu_extras.group(1).split(",")
    assert re.search(r"^\$\(STAMP\):", makefile, re.MULTILINE)
    assert re.search(r"^venv: \$\(STAMP\)", makefile, re.MULTILINE)
    for name in gpu_extras.group(1).split(",") + cpu_extras.group(1).split(","):
        assert name in extras, f"extra [{name}] is not in pyproject.toml"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_conventions(kind):
    path = DOCKERFILES[kind]
    users = [a for w, a in _instructions(path) if w == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"{path.name} must run as a non-root user"
    entrypoint = _exec_form(path, "ENTRYPOINT")
    assert entrypoint[:3] == ["python", "-m", "serve"], entrypoint
    argv = _dockerfile_argv(kind)
    assert argv[argv.index("--host") + 1] == "0.0.0.0", "the server must listen on all interfaces in a container"
    port = argv[argv.index("--port") + 1]
    assert port in _one(path, "EXPOSE").split()
    health = _one(path, "HEALTHCHECK")
    assert f"127.0.0.1:{port}/health" in health, f"HEALTHCHECK must probe /health on port {port}: {health}"
    env = _env(path)
    assert env.get("QWEN_W4_HOME") and env.get("HF_HOME"), "QWEN_W4_HOME and HF_HOME must be set"
    volumes = json.loads(_one(path, "VOLUME"))
    assert {env["QWEN_W4_HOME"], env["HF_HOME"]} <= set(volumes), volumes
    assert env.get("VIRTUAL_ENV") and env.get("PATH", "").split(":")[0] == env["VIRTUAL_ENV"] + "/bin", (
        "`python` must be the project's venv")
    secrets = [k for w, a in _instructions(path) if w in {"ENV", "ARG"} for k in re.findall(r"\w*(?:KEY|TOKEN)\w*", a)]
    assert not secrets, f"{path.name} bakes {secrets} into the image: secrets come from the environment at run time"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_command_is_a_real_cli(kind):
    _assert_real_cli(_dockerfile_argv(kind), f"Dockerfile.{kind}")


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_command_needs_the_api_key(kind, tmp_path):
    """The image's serve command (`--dry-run`: nothing starts) refuses to listen on 0.0.0.0 without QWEN_W4_API_KEY,
    and with it builds a vLLM command on 0.0.0.0:8000 that carries the key without printing it. GPU: the image's
    default CMD; CPU: the entrypoint with a user's own `--model`, as `docker run IMAGE --model ...` passes it."""
    path = DOCKERFILES[kind]
    entrypoint = _exec_form(path, "ENTRYPOINT")
    tail = {"gpu": _exec_form(path, "CMD") + ["--device", "cuda"],
            "cpu": ["--model", "vl-fp16", "--device", "cpu"]}[kind]
    argv = [sys.executable, "-m", *entrypoint[2:], *tail, "--dry-run"]
    env = {k: v for k, v in os.environ.items() if k != "QWEN_W4_API_KEY"} | {"QWEN_W4_HOME": str(tmp_path)}

    r = subprocess.run(argv, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, f"serve accepted --host 0.0.0.0 without a key:\n{r.stdout}"
    assert r.stderr.startswith("error:") and "QWEN_W4_API_KEY" in r.stderr and "Traceback" not in r.stderr, r.stderr

    key = "k-" + secrets.token_hex(12)
    r = subprocess.run(argv, cwd=REPO, env=env | {"QWEN_W4_API_KEY": key}, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--host 0.0.0.0 --port 8000" in r.stdout and "vllm.entrypoints.openai.api_server" in r.stdout, r.stdout
    assert "VLLM_API_KEY=" in r.stdout and key not in r.stdout + r.stderr, "the API key must reach vLLM, unprinted"


# ---------------------------------------------------------------- compose

def test_compose_validates_against_the_compose_schema():
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                        str(COMPOSE)], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_schema_check_is_not_vacuous(tmp_path):
    bad = _compose()
    bad["services"]["serve-cpu"]["shm_sise"] = "4gb"
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(bad))
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                        str(path)], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "shm_sise" in r.stdout, r.stdout + r.stderr


def test_compose_structure():
    doc = _compose()
    services = doc["services"]
    assert {n: s.get("profiles") for n, s in services.items()} == SERVICES
    declared = set(doc.get("volumes") or {})
    for name, svc in services.items():
        build = svc["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO, f"{name}: build context {context} is not the repository root"
        assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            assert source in declared, f"{name}: volume {source} not declared at top level"
        env = svc.get("environment") or {}
        assert "QWEN_W4_API_KEY" in env and env["QWEN_W4_API_KEY"] is None, (
            f"{name}: QWEN_W4_API_KEY must pass through from the shell, never be written in compose.yaml")
        for port in svc.get("ports", []):
            assert _defaults(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond the host's loopback"
    # every image that writes data sees the same two volumes, mounted where the Dockerfiles point HF_HOME/QWEN_W4_HOME
    env = _env(DOCKERFILES["cpu"])
    for name, svc in services.items():
        targets = {v.split(":")[1] for v in svc["volumes"]}
        assert {env["HF_HOME"], env["QWEN_W4_HOME"]} <= targets, f"{name}: {targets}"
    for name in ("serve-gpu", "serve-gpus"):
        gpu = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in gpu), name
    dp = _service_argv("serve-gpus")  # one replica per GPU: data parallel over every reserved GPU
    assert dp[dp.index("--data-parallel-size") + 1] == "auto" and gpu[0].get("count") == "all"
    assert "deploy" not in services["serve-cpu"]


def test_compose_demo_points_at_the_served_endpoint():
    services = _compose()["services"]
    argv = _service_argv("demo")
    endpoint = argv[argv.index("--endpoint") + 1]
    m = re.fullmatch(r"http://([\w-]+):(\d+)/v1", endpoint)
    assert m, endpoint
    host, port = m.groups()
    for name in ("serve-gpu", "serve-gpus", "serve-cpu"):
        serve = services[name]
        assert host in serve["networks"]["default"]["aliases"], f"{name} does not answer as {host}"
        serve_argv = _service_argv(name)
        assert serve_argv[serve_argv.index("--port") + 1] == port
        assert services["demo"]["depends_on"][name]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_compose_command_is_a_real_cli(service):
    _assert_real_cli(_service_argv(service), f"compose service {service}")


# ---------------------------------------------------------------- build context

def _ignored(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `rel` out of the build context (last matching pattern wins, `!` re-includes)."""
    parts = rel.split("/")
    result = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        segs = pat.split("/")

        def match(p: list[str], s: list[str]) -> bool:
            if not s:
                return True  # a pattern matching a folder excludes everything inside it
            if s[0] == "**":
                return any(match(p[i:], s[1:]) for i in range(len(p) + 1))
            return bool(p) and fnmatchcase(p[0], s[0]) and match(p[1:], s[1:])

        if match(parts, segs):
            result = not negate
    return result


def test_dockerignore_keeps_what_the_images_need():
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    needed = ["pyproject.toml", "constraints.txt", "Makefile", "README.md"]
    for pkg in _packages():
        needed += [f"{pkg}/__init__.py"] + [str(p.relative_to(REPO)) for p in (REPO / pkg).rglob("*.py")
                                           if "__pycache__" not in p.parts]
    for pkg, globs in _pyproject()["tool"]["setuptools"].get("package-data", {}).items():
        for g in globs:
            needed += [str(p.relative_to(REPO)) for p in (REPO / pkg).glob(g)]
    kept_out = [n for n in needed if _ignored(n, patterns)]
    assert not kept_out, f".dockerignore excludes files the images install: {kept_out}"
    for heavy in (".venv/bin/python", ".git/HEAD", "artifacts/tiny-vl/model.safetensors", ".env"):
        assert _ignored(heavy, patterns), f".dockerignore lets {heavy} into the build context"

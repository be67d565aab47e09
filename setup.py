"""Build otlp-sidecar: the package plus the optional Cython accelerators in ext/.

Every ``ext/<name>.pyx`` becomes ``sidecar._ext.<name>``. The accelerators are
optional: ``OTLP_SIDECAR_NO_EXTENSIONS=1`` skips them and the package runs on its
pure-Python twins. The build prints which of the two it made.
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
NO_EXTENSIONS = os.environ.get("OTLP_SIDECAR_NO_EXTENSIONS", "") not in ("", "0")


def _declarations_changed() -> bool:
    """Is a ``sidecar/_ext/*.pxd`` newer than a generated ``ext/*.c``? Then every module is
    generated again: Cython's own check does not follow a cimport into ``sidecar._ext`` from
    ``ext/``, and a module left with an old declaration fails to import (``does not export
    expected C function``), which the twins would then silently stand in for."""
    declarations = [p.stat().st_mtime for p in (HERE / "sidecar" / "_ext").glob("*.pxd")]
    generated = [p.stat().st_mtime for p in (HERE / "ext").glob("*.c")]
    return bool(declarations and generated) and max(declarations) > min(generated)


def extensions() -> list:
    if NO_EXTENSIONS:
        print("otlp-sidecar: building without C extensions (pure-Python twins)", file=sys.stderr)
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    modules = [
        Extension(
            f"sidecar._ext.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            extra_compile_args=["-O3"],
        )
        for pyx in sorted((HERE / "ext").glob("*.pyx"))
    ]
    print(
        "otlp-sidecar: C extensions (compiled where out of date): " + ", ".join(m.name for m in modules),
        file=sys.stderr,
    )
    return cythonize(
        modules,
        force=_declarations_changed(),
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(
    name="otlp-sidecar",
    version="0.1.0",
    description="Per-pod OTLP policy sidecar: PCI masking, tenant isolation and sampling in Rego",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["sidecar", "sidecar.*"]),
    # the bundled policy set: what `otlp-sidecar run` applies with no policy directory
    package_data={"sidecar": [
        "py.typed", "_ext/*.pyi", "_ext/*.pxd",
        "policy/bundled/*.json", "policy/bundled/*.rego", "policy/bundled/*/*.rego",
    ]},
    ext_modules=extensions(),
    install_requires=[
        "aiohttp>=3.9,<4",
        "grpclib==0.4.9",
        "zstandard>=0.22",
        "cryptography>=42",
        "regopy>=1.5,<2",
        "opa-python-client>=3,<4",
        "prometheus-client>=0.20",
        "opentelemetry-proto>=1.27",
        "protobuf>=5",
        "googleapis-common-protos>=1.60",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-aiohttp>=1.0",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "opentelemetry-sdk>=1.27",
            "opentelemetry-exporter-otlp-proto-grpc>=1.27",
            "opentelemetry-exporter-otlp-proto-http>=1.27",
            "helm-python-sdk>=0.2",
            "kubernetes-validate>=1.30",
            "jsonpatch>=1.33",
            "pyyaml>=6",
            "grpcio>=1.60",
            "py-spy>=0.3",
            "ruff>=0.6",
            # the type gate (tests/test_types.py: mypy --strict, configured in pyproject.toml),
            # pinned to a minor release so a new mypy check cannot fail CI by surprise
            "mypy>=2.4,<2.5",
            "types-protobuf>=6",
            "types-PyYAML>=6.0",
            "googleapis-common-protos-stubs>=2.3",
        ],
    },
    entry_points={"console_scripts": ["otlp-sidecar=sidecar.cli:main"]},
)

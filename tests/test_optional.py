"""Optional dependencies (llm2vec_fast.optional): every feature that needs one is refused up
front, naming the package and how to install it. The packages are installed here, so their
absence is simulated with ``sys.modules[name] = None`` (what ``import`` itself treats as
"not importable")."""

from __future__ import annotations

import importlib
import sys

import pytest

from llm2vec_fast.optional import (
    MissingDependencyError,
    install_command,
    is_available,
    optional_import,
    require,
)


def test_require_names_the_extra_or_the_package(monkeypatch):
    assert is_available("json") and not is_available("no_such_module_xyz")
    require("json", feature="anything")  # present: nothing happens
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert not is_available("pyarrow")
    with pytest.raises(MissingDependencyError) as e:
        require("json", "pyarrow", feature="writing Parquet shards (--format parquet)")
    assert str(e.value) == (
        "writing Parquet shards (--format parquet) needs pyarrow, which is not installed: "
        "pip install 'llm2vec-fast[parquet]'"
    )
    assert isinstance(e.value, ImportError) and e.value.name == "pyarrow"
    assert install_command("ray") == "pip install 'llm2vec-fast[ray]'"
    assert install_command("mteb") == "pip install 'llm2vec-fast[mteb]'"
    assert install_command("sentence_transformers") == "pip install 'llm2vec-fast[st]'"
    assert install_command("gensim") == "pip install gensim"  # in no extra but [test]


def test_optional_import_converts_only_its_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)
    with pytest.raises(MissingDependencyError, match=r"X needs mteb.*llm2vec-fast\[mteb\]"):
        with optional_import("mteb", feature="X"):
            import mteb  # noqa: F401
    with pytest.raises(ModuleNotFoundError) as e:  # another missing module is not hidden
        with optional_import("mteb", feature="X"):
            import no_such_module_xyz  # noqa: F401
    assert not isinstance(e.value, MissingDependencyError)


@pytest.mark.parametrize(
    "module, package, extra",
    [
        ("llm2vec_fast.integrations.mteb", "mteb", "mteb"),
        ("llm2vec_fast.integrations.sentence_transformers", "sentence_transformers", "st"),
    ],
)
def test_integration_modules_name_their_extra(module, package, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)
    # submodules an earlier test imported would still be found: hide them too (restored after)
    for name in [n for n in sys.modules if n.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, module, raising=False)  # imported anew, restored after
    with pytest.raises(MissingDependencyError) as e:
        importlib.import_module(module)
    assert f"pip install 'llm2vec-fast[{extra}]'" in str(e.value), e.value


def test_ray_job_without_ray_fails_before_any_work(monkeypatch, tmp_path):
    from llm2vec_fast.batch_job import JobConfig
    from llm2vec_fast.integrations.ray import run_ray_job

    (tmp_path / "in.txt").write_text("one\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'llm2vec-fast\[ray\]'"):
        run_ray_job(tmp_path / "in.txt", tmp_path / "out", JobConfig())
    assert not (tmp_path / "out").exists()

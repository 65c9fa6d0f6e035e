"""The public surface a new user meets first: the namespace, ``connect``, small errors.

Each test pins a papercut found by trying trioq as a newcomer would: what
``import trioq`` makes reachable, what a star import brings in, what the
common mistake ``await trioq.connect(...)`` says, and the messages of
addresses and timeouts.
"""

from __future__ import annotations

import builtins
import importlib
import subprocess
import sys
from typing import Any

import pytest
import trio

import trioq

WAIT = 10.0  # seconds any one step may take


def _run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing of this test process imported)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- the namespace ------------------------------------------------------------------------


def test_import_trioq_makes_the_streams_module_reachable() -> None:
    out = _run_python("import trioq; print(trioq.streams.merge.__name__)")
    assert out.strip() == "merge"


def test_star_import_of_streams_shadows_no_builtin() -> None:
    namespace: dict[str, Any] = {}
    exec("from trioq.streams import *", namespace)
    shadowed = {name for name in namespace if name != "__builtins__"} & set(vars(builtins))
    assert shadowed == set()
    assert {"scatter", "gather", "multiplex", "merge"} <= set(namespace)
    assert callable(trioq.streams.map)  # still there by its name


def test_trioq_namespace_holds_only_public_names_and_modules() -> None:
    code = (
        "import types, trioq\n"
        "for name in trioq.__all__: getattr(trioq, name)\n"
        "trioq.streams\n"
        "extra = sorted(name for name, value in vars(trioq).items()\n"
        "    if not name.startswith('__') and name not in trioq.__all__\n"
        "    and not isinstance(value, types.ModuleType))\n"
        "print(extra)\n"
    )
    assert _run_python(code).strip() == "[]"


def test_dir_of_trioq_lists_the_public_names() -> None:
    listed = set(dir(trioq))
    assert set(trioq.__all__) <= listed
    assert "streams" in listed
    assert "_LAZY" not in listed and "importlib" not in listed


# -- connect ------------------------------------------------------------------------------


async def test_awaiting_connect_raises_type_error_that_says_async_with() -> None:
    with pytest.raises(TypeError, match=r"async with trioq\.connect\('tcp://127\.0\.0\.1:1'\)"):
        await trioq.connect("tcp://127.0.0.1:1", token="x" * 32)  # type: ignore[misc]


@pytest.mark.parametrize("address", ["http://127.0.0.1:8786", "tls+tcp://127.0.0.1:8786"])
async def test_connect_refuses_another_scheme_with_a_clear_value_error(address: str) -> None:
    with pytest.raises(ValueError, match=r"unsupported address scheme .*tcp://host:port"):
        async with trioq.connect(address, token="x" * 32):
            pass  # pragma: no cover - never reached


async def test_connect_takes_a_bare_host_port_as_tcp(cluster: Any) -> None:
    bare = cluster.address.removeprefix("tcp://")
    with trio.fail_after(WAIT):
        async with trioq.connect(bare) as client:
            await client.variable("v").set(1)
            assert await client.variable("v").get() == 1


async def test_connect_refuses_an_address_that_is_not_a_str() -> None:
    with pytest.raises(TypeError, match="address must be a str"):
        async with trioq.connect(8786):  # type: ignore[arg-type]
            pass  # pragma: no cover - never reached


async def test_a_connect_can_be_entered_once() -> None:
    connecting = trioq.connect("http://nowhere:1", token="x" * 32)
    with pytest.raises(ValueError):
        async with connecting:
            pass  # pragma: no cover - never reached
    with pytest.raises(RuntimeError, match="entered already"):
        async with connecting:
            pass  # pragma: no cover - never reached


# -- variables ----------------------------------------------------------------------------


async def test_variable_get_timeout_raises_too_slow_naming_the_variable(cluster: Any) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as client:
            with pytest.raises(trio.TooSlowError, match=r"variable 'never-set' .*0\.05 s"):
                await client.variable("never-set").get(timeout=0.05)
            await client.variable("never-set").set("now")  # the withdrawn read left nothing
            assert await client.variable("never-set").get(timeout=WAIT) == "now"


async def test_outer_cancel_of_variable_get_with_timeout_is_not_turned_into_too_slow(
    cluster: Any,
) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as client:
            with trio.move_on_after(0.05) as outer:
                await client.variable("never-set").get(timeout=WAIT)
            assert outer.cancelled_caught


def test_signatures_written_out_in_the_api_page_list_every_real_parameter() -> None:
    """A signature given by hand in docs/api.rst cannot drift from the function's."""
    import inspect
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "api.rst").read_text()
    written = re.findall(r"^\.\. auto(?:function|class):: (trioq\.[\w.]+)\((.*)\)$", page, re.M)
    checked = 0
    for dotted, params in written:
        if not params:
            continue  # "Name()": the signature is left out on purpose
        obj: Any = importlib.import_module("trioq")
        for part in dotted.split(".")[1:]:
            obj = getattr(obj, part)
        real = [
            name
            for name, p in inspect.signature(obj).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        shown = [p.split("=")[0].strip() for p in params.split(",")]
        shown = [name for name in shown if name not in ("*", "/")]
        assert shown == real, f"{dotted}: the api page shows {shown}, the code has {real}"
        checked += 1
    assert checked >= 2  # connect and open_cluster at least

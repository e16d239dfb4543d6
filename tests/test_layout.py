"""The shape of the package, as docs/architecture.md describes it: no import cycle, few
entries at the top, the app module wiring only, and every client protocol's routes
declared once (``ROUTES``) and served by both routers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import lmgate
from lmgate.frontends import FRONTENDS
from lmgate.frontends.base import CHAT, Route
from lmgate.web.server import HotRoutes
from tests.support.gateway import RunningGateway

PACKAGE = Path(lmgate.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each lmgate module's imports of other lmgate modules, as run at import time
    (those under ``TYPE_CHECKING`` and inside functions are not)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("lmgate")
            ):
                for alias in node.names:  # ``from lmgate.x import y``: y may be a module
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("lmgate.")}
        graph[name] = found & modules.keys()
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for child in sorted(graph[name]):
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if child not in state and (found := walk(child)):
                return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := walk(name)):
            return found
    return None


def test_no_import_cycle() -> None:
    assert cycle(imports()) is None


def test_a_cycle_is_found() -> None:  # the check above can fail
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_few_entries_at_the_top_and_wiring_only_in_the_app_module() -> None:
    top = [entry for entry in PACKAGE.iterdir() if entry.name != "__pycache__"]
    assert len(top) <= 16, sorted(entry.name for entry in top)
    assert len((PACKAGE / "web" / "app.py").read_text().splitlines()) <= 150


def test_only_the_http_layer_and_frontends_know_starlette() -> None:
    for name, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py")):
        if name.startswith(("lmgate.web", "lmgate.frontends")):
            continue
        assert "starlette" not in path.read_text(), name


@pytest.mark.parametrize("frontend", FRONTENDS, ids=lambda module: module.__name__)
def test_each_frontend_declares_its_routes(frontend: object) -> None:
    routes = getattr(frontend, "ROUTES", ())
    sockets = getattr(frontend, "SOCKETS", ())  # WebSocket endpoints: (path, handler)
    assert routes or sockets
    assert all(isinstance(route, Route) for route in routes)


def test_both_routers_serve_every_declared_route() -> None:
    gateway = RunningGateway({"server": {"route_prefixes": ["/api"]}})
    try:
        app = gateway.app
        assert isinstance(app, HotRoutes)
        served = {getattr(route, "path", "") for route in app.app.routes}
        for frontend in FRONTENDS:
            for route in frontend.ROUTES:
                for prefix in ("", "/api"):
                    assert prefix + route.path in served
                    if route.method == "POST" and route.handler is CHAT:
                        assert prefix + route.path in app.routes  # the fast path
            for path, _ in getattr(frontend, "SOCKETS", ()):
                assert {path, "/api" + path} <= served
        prefixes = {prefix for prefix, _, _ in app.targets}
        assert {"/v1beta/models/", "/api/v1beta/models/", "/v1/models/"} <= prefixes
    finally:
        gateway.stop()


def test_the_readme_links_every_docs_page_and_every_link_resolves() -> None:
    root = PACKAGE.parent
    readme = root / "README.md"
    pages = sorted((root / "docs").glob("*.md"))
    linked = {link.partition("#")[0] for link in _links(readme)}
    assert {f"docs/{page.name}" for page in pages} <= linked
    for page in [readme, *pages]:
        for link in _links(page):
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            assert target.exists(), (page.name, link)
            if anchor and target.suffix == ".md":
                assert anchor in _anchors(target), (page.name, link)


def _links(page: Path) -> list[str]:
    return [link for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text())
            if not link.startswith(("http://", "https://", "mailto:"))]  # fmt: skip


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            title = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            found.add(title.replace(" ", "-"))
    return found

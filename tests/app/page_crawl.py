"""Every HTML page of the app, rendered for a seeded team: the GET routes are read from the
app's router (a new page is covered without editing a list), their ids filled from
web_helpers.seed_team_objects. Plus the pages without a session and the empty states of
a new team. Used by the i18n and accessibility tests."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser

from fastapi.routing import APIRoute

from web_helpers import new_photo_set, seed_failures, seed_team_objects, sign_up

NOT_PAGES = ("/api/", "/static/", "/docs", "/redoc", "/openapi", "/health")


def _api_routes(routes):
    """The APIRoutes, also inside included routers (FastAPI wraps those; their routes carry
    their full path when the router has its prefix itself)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def html_get_paths(app) -> list[str]:
    """The paths of the GET routes that may answer HTML (files and downloads are left out
    by their answer's content type, in crawl())."""
    out = [r.path for r in _api_routes(app.routes) if "GET" in r.methods and not r.path.startswith(NOT_PAGES)]
    return sorted(set(out))


def crawl(client, ids: dict, headers: dict | None = None) -> dict[str, str]:
    """{url: html} of every HTML page the seeded objects reach."""
    pages = {}
    for path in html_get_paths(client.app):
        missing = set(re.findall(r"{(\w+)}", path)) - set(ids)
        assert not missing, f"page {path} needs ids the seed does not make: {missing}; extend seed_team_objects"
        url = re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], path)
        r = client.get(url, headers=headers or {}, follow_redirects=False)
        if r.status_code in (302, 303, 307) or not r.headers.get("content-type", "").startswith("text/html"):
            continue  # a download or a redirect to one
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        pages[url] = r.text
    return pages


@dataclass
class Site:
    """The seeded team's pages, a new team's (empty) pages and the pages before sign-in."""
    pages: dict[str, str]
    user_data: list[str] = field(default_factory=list)


def build_site(make_client, settings, lang: str) -> Site:
    headers = {"Accept-Language": lang}
    client = make_client(settings)
    me = sign_up(client)
    ids = seed_team_objects(client)
    pages = crawl(client, ids, headers)
    # what failed, with the reason the worker wrote (shown in the reader's language)
    failed = seed_failures(client, ids)
    pages["(failed) run"] = client.get(f"/runs/{failed['run_id']}", headers=headers).text
    pages["(failed) gallery and pack"] = client.get(f"/galleries/{failed['gallery_id']}", headers=headers).text

    # the empty states: a gallery view that shows nothing, a new team's start page, a photo
    # set without photos
    pages["(empty) gallery filter"] = client.get(f"/galleries/{ids['gallery_id']}?show=rejected", headers=headers).text
    fresh = make_client(settings)
    other = sign_up(fresh)
    pages["(empty) /"] = fresh.get("/", headers=headers).text
    empty_set = new_photo_set(fresh, n_photos=0)
    pages["(empty) photo set"] = fresh.get(f"/photo-sets/{empty_set}", headers=headers).text

    anon = make_client(settings)
    for path in ("/login", "/signup"):
        pages[f"(anonymous) {path}"] = anon.get(path, headers=headers).text
    pages["(error) 404"] = client.get("/photo-sets/00000000-0000-0000-0000-000000000000", headers=headers).text
    pages["(error) no such page"] = client.get("/no-such-page", headers={**headers, "Accept": "text/html"}).text
    # a form sent back with its error beside the field
    token = re.search(r'name="csrf_token" value="([^"]+)"', pages["(anonymous) /signup"]).group(1)
    pages["(form error) /signup"] = anon.post("/signup", headers=headers, data={
        "email": "not-an-email", "password": "x", "csrf_token": token}).text
    home_token = re.search(r'name="csrf_token" value="([^"]+)"', pages["(empty) /"]).group(1)
    pages["(form error) /"] = fresh.post("/photo-sets", headers=headers, data={
        "name": "", "class_word": "bottle", "csrf_token": home_token}).text
    user_data = [me["user"]["email"], other["user"]["email"], "Spring launch", "bottle"]
    return Site(pages, user_data)


# ------------------------------------------------------------------------------ parsing
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None
    children: list = field(default_factory=list)  # Elements and str

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Element):
                yield from c.iter()

    def ancestors(self):
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {}, None)
        self.node = self.root

    def handle_starttag(self, tag, attrs):
        el = Element(tag, {k: (v or "") for k, v in attrs}, self.node)
        self.node.children.append(el)
        if tag not in VOID:
            self.node = el

    def handle_startendtag(self, tag, attrs):
        self.node.children.append(Element(tag, {k: (v or "") for k, v in attrs}, self.node))

    def handle_endtag(self, tag):
        node = self.node
        while node is not self.root and node.tag != tag:  # tolerate an implied close (<p>, <li>)
            node = node.parent
        if node is not self.root:
            self.node = node.parent

    def handle_data(self, data):
        self.node.children.append(data)


def parse(html: str) -> Element:
    builder = _Builder()
    builder.feed(html)
    return builder.root


@contextmanager
def crawled_site(settings, lang: str):
    """build_site with TestClients of the real app, closed afterwards (a module fixture's body)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    clients = []

    def make(client_settings):
        client = TestClient(create_app(client_settings))
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield build_site(make, settings, lang)
    finally:
        for c in clients:
            c.__exit__(None, None, None)

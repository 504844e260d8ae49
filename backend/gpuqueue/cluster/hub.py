"""JupyterHub as the API service's front door: ``gpuqueue api`` as a hub service.

When the API service runs as a JupyterHub service (the hub sets ``JUPYTERHUB_SERVICE_NAME`` /
``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_API_TOKEN``, or ``gpuqueue api --auth hub``), requests
are authenticated by the hub, with JupyterHub's own client classes
(:class:`jupyterhub.services.auth.HubOAuth`):

* a token (``Authorization: token T``): a user server's own ``JUPYTERHUB_API_TOKEN``, or any
  hub token of the user. It must hold ``access:services!service=<name>`` (give it to users
  through a hub role, and to server tokens with ``c.Spawner.server_token_scopes``).
  The hub's answer is cached (``--hub-cache-s``), so a submit costs no round trip to the hub.
* a browser's OAuth cookie (``GET`` only: a cookie never authorizes a change, so no page of
  another site can submit or cancel in the user's name). ``<prefix>`` starts the OAuth login.

The job owner is the hub user's name, bound to the hub account it first came from
(``gpuqueue.cluster.hub_names``: a later account with that name is refused until a queue admin
releases it); the user's hub groups may place it in a fair-share group
(``QueueConfig.group_of``: a ``[groups.NAME]`` named as one of them, when no ``members`` list
names the user). Admins hold the custom scope ``custom:gpuqueue:admin``
(declare it in ``c.JupyterHub.custom_scopes`` and grant it through a role); ``--admin-scope``
names another. No users file is read.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from tornado import web

from ..queue.errors import Forbidden, Unauthenticated, Unavailable
from ..embedded.service import Caller

ADMIN_SCOPE = "custom:gpuqueue:admin"


def in_hub() -> bool:
    """Whether this process was started as a JupyterHub service (the hub's environment)."""
    return bool(os.environ.get("JUPYTERHUB_API_TOKEN")
                and (os.environ.get("JUPYTERHUB_SERVICE_NAME") or os.environ.get("JUPYTERHUB_API_URL")))


def service_prefix() -> str:
    """The URL prefix the hub's proxy routes to this service (``/services/gpuqueue/``), or ``/``."""
    p = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/") or "/"
    return p if p.endswith("/") else p + "/"


def service_port() -> Optional[int]:
    """The port of the URL the hub gives this service (``JUPYTERHUB_SERVICE_URL``), if any."""
    from urllib.parse import urlsplit

    url = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
    try:
        return urlsplit(url).port if url else None
    except ValueError:
        return None


def service_host() -> Optional[str]:
    """The host of the URL the hub gives this service (``JUPYTERHUB_SERVICE_URL``), if any: where
    the hub's proxy reaches it."""
    from urllib.parse import urlsplit

    url = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
    try:
        return urlsplit(url).hostname if url else None
    except ValueError:
        return None


def make_hub_auth(cache_s: int = 60) -> Any:
    """JupyterHub's ``HubOAuth`` for this service (api token, hub URL, OAuth client from the
    hub's environment). Raises ValueError naming what is missing."""
    try:
        from jupyterhub.services.auth import HubOAuth
    except ImportError:
        import sys

        raise ValueError(f"--auth hub needs the jupyterhub package (JupyterHub's client) in the environment of "
                         f"{sys.executable}: {sys.executable} -m pip install 'jupyterhub>=5'") from None
    missing = [v for v in ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL") if not os.environ.get(v)]
    if missing:
        raise ValueError(f"--auth hub: {' and '.join(missing)} not set: run `gpuqueue api` as a JupyterHub "
                         f"service (c.JupyterHub.services), or set them for an external service (docs/deploy.md)")
    auth = HubOAuth.instance(cache_max_age=cache_s)  # the one the OAuth handlers use too
    if not auth.access_scopes:
        raise ValueError("--auth hub: set JUPYTERHUB_SERVICE_NAME (the service's name in the hub config)")
    return auth


def no_access_message(user: str, scopes: set[str], access_scopes: set[str]) -> str:
    """Why a hub user's token may not use the service, and the hub admin's fix. A user server's
    own token (it holds ``access:servers!server=USER/``) gets its scopes from
    ``c.Spawner.server_token_scopes``, not from the user's roles: the usual slip of a hub config
    that sets that list itself (the later assignment replaces the documented one)."""
    need = " or ".join(sorted(access_scopes))
    if any(s.startswith("access:servers!server=") for s in scopes):
        return (f"the token of hub user {user!r}'s server has no access to this service: the hub admin adds "
                f"{need} to c.Spawner.server_token_scopes in jupyterhub_config.py (docs/deploy.md, JupyterHub), "
                f"then the user restarts their server (the hub's File > Hub Control Panel > Stop My Server)")
    return (f"hub user {user!r} has no access to this service with this token: the hub admin grants {need} "
            f"through a role (c.JupyterHub.load_roles, e.g. the 'user' role; docs/deploy.md, JupyterHub), and a "
            f"token made on the hub's token page needs that scope too")


class HubAuthMixin:
    """Authenticates each request with the hub: the caller is the hub user the token (or the
    OAuth cookie, for GETs) belongs to."""

    async def prepare(self) -> None:
        hub = self.settings["gpuqueue_hub_auth"]  # type: ignore[attr-defined]
        handler: web.RequestHandler = self  # type: ignore[assignment]
        token = hub.get_token(handler, in_cookie=False)
        if not token and handler.request.method not in ("GET", "HEAD"):
            raise Unauthenticated("a JupyterHub token is needed (Authorization: token <JUPYTERHUB_API_TOKEN>); "
                                  "a browser cookie only reads")
        try:
            model = await hub.get_user(handler, sync=False)
        except web.HTTPError as e:
            raise Unavailable(f"cannot check the request's token with JupyterHub ({e.log_message or e.reason}); "
                              f"try again in a moment") from None
        if not model:
            raise Unauthenticated("a valid JupyterHub token is needed: in a hub user server, "
                                  "JUPYTERHUB_API_TOKEN is yours")
        if model.get("kind", "user") != "user":  # a service's token: its name is no user's
            raise Forbidden(f"the token of hub {model.get('kind')} {model.get('name')!r} is not a user's: jobs "
                            f"belong to hub users (use a token of the user the jobs are for)")
        scopes = set(model.get("scopes") or [])
        if not hub.check_scopes(hub.access_scopes, model):
            raise Forbidden(no_access_message(str(model.get("name")), scopes, hub.access_scopes))
        names = self.settings.get("gpuqueue_hub_names")  # type: ignore[attr-defined]
        account = None  # a new hub account with an earlier one's name: refused (hub_names.py)
        if names is not None:
            account = await names.check(hub.get_token(handler) or "", model)
        admin_scope = self.settings["gpuqueue_admin_scope"]  # type: ignore[attr-defined]
        groups = model.get("groups") or ()  # present when the token may read its own groups
        self._gq_caller = Caller(name=str(model["name"]), admin=admin_scope in scopes,
                                 hub_groups=tuple(sorted(str(g) for g in groups)), hub_account=account)

    def get_caller(self) -> Caller:
        return self._gq_caller


def _login_handler() -> type:
    from jupyterhub.services.auth import HubOAuthenticated

    class HubLoginHandler(HubOAuthenticated, web.RequestHandler):
        """``GET <prefix>``: a browser logs in through the hub (OAuth), then sees its queue."""

        @property
        def hub_auth(self) -> Any:
            return self.settings["gpuqueue_hub_auth"]

        async def get(self) -> None:
            # asks the hub without blocking the event loop (tornado's get_current_user is sync)
            user = await self.hub_auth.get_user(self, sync=False)
            if not user:
                self.redirect(self.get_login_url())  # the hub's OAuth, with a state cookie
                return
            self.redirect(self.settings["gpuqueue_prefix"] + "gpuqueue/api/queue")

    return HubLoginHandler


def hub_routes(prefix: str) -> list[tuple[str, type]]:
    """The OAuth callback and the login page under ``prefix``."""
    from jupyterhub.services.auth import HubOAuthCallbackHandler

    return [(prefix + "oauth_callback", HubOAuthCallbackHandler), (prefix, _login_handler())]


def release_route(prefix: str) -> str:
    """The path of a queue admin's release of a hub user name (``hub_names.ReleaseHandler``)."""
    return prefix + "gpuqueue/api/hub-names/([^/]+)/release"

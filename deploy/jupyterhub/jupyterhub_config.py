# gpuqueue as a JupyterHub service: add this to jupyterhub_config.py (docs/deploy.md).
# The hub starts `gpuqueue api`, which takes each request's user from the hub; user servers
# forward to it with their own JUPYTERHUB_API_TOKEN. No users file, no per-user token.
import os
import shutil

GPUQUEUE_API = os.environ.get("GPUQUEUE_API", "http://127.0.0.1:8780")  # where the hub runs the API
if not os.environ.get("GPUQUEUE_REDIS_URL"):
    raise SystemExit("jupyterhub_config.py: set GPUQUEUE_REDIS_URL in the hub's environment to the Redis URL of "
                     "`gpuqueue api`, e.g. redis://gpuqueue-api:PASSWORD@redis-host:6379/0 (docs/deploy.md, JupyterHub)")
GPUQUEUE = "/opt/gpuqueue/venv/bin/gpuqueue"  # the API's install: the cluster extra and jupyterhub (docs/deploy.md)
if not os.access(GPUQUEUE, os.X_OK):
    GPUQUEUE = shutil.which("gpuqueue") or ""  # else one on the hub's PATH
if not GPUQUEUE:
    raise SystemExit("jupyterhub_config.py: no `gpuqueue` command for the hub to start the API with: install it in "
                     "/opt/gpuqueue/venv with the cluster extra and jupyterhub (docs/deploy.md, JupyterHub), or put "
                     "the bin/ folder of the environment that has them on the hub's PATH")

c.JupyterHub.services = [
    {
        "name": "gpuqueue",
        "url": GPUQUEUE_API,  # the API listens on this URL's port; the proxy routes /services/gpuqueue/ to it
        "command": [GPUQUEUE, "api"],  # --auth hub is implied when the hub starts it
        # the store; the password stays out of the command line
        "environment": {"GPUQUEUE_REDIS_URL": os.environ["GPUQUEUE_REDIS_URL"]},
        "oauth_no_confirm": True,  # browsers: the hub's login, no consent page for this service
        "oauth_client_allowed_scopes": ["custom:gpuqueue:admin"],  # an admin's browser stays admin
    }
]
c.JupyterHub.custom_scopes = {
    "custom:gpuqueue:admin": {"description": "see, cancel and preempt every user's gpuqueue jobs"},
}
c.JupyterHub.load_roles = [
    # every user may use the queue (JupyterHub's default 'user' role plus the service)
    {"name": "user", "scopes": ["self", "access:services!service=gpuqueue"]},
    # queue admins: hub users or groups given this role
    {"name": "gpuqueue-admin", "scopes": ["custom:gpuqueue:admin"], "users": [], "groups": ["gpuqueue-admins"]},
    # the service reads each hub account's creation time: a new account that takes a deleted or
    # renamed user's name does not get that name's jobs (docs/deploy.md, Renaming and deleting hub users)
    {"name": "gpuqueue-service", "scopes": ["read:users"], "services": ["gpuqueue"]},
]
# a user server's own token carries the user's access to the service (and admin, if held)
c.Spawner.server_token_scopes = [
    "access:servers!server", "users:activity!user",
    "access:services!service=gpuqueue", "custom:gpuqueue:admin",
]
# the extension in each user server forwards to the service with that token; the service's
# routes are under the hub's base_url (its hub.base_url is BASE/hub/)
c.Spawner.environment = {
    "GPUQUEUE_API_URL": lambda spawner: GPUQUEUE_API + spawner.hub.base_url.removesuffix("hub/") + "services/gpuqueue/",
}

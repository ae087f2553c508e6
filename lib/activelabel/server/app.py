"""The ASGI app of ``activelabel serve``: MONAI Label's FastAPI app plus /activelabel routes.

Importing this module assembles the app (uvicorn is pointed at ``activelabel.server.app:app``):
the ``/activelabel`` routers, the infer route with its cache headers, MONAI Label's blocking
endpoints moved to worker threads, MONAI Label's errors answered by kind (4xx for the caller's
mistakes), the OpenAPI document describing the real inputs, the request guard, the
one-task-at-a-time guard and the task worker.  Settings the server must not start with, and a
damaged database it cannot rebuild (see :mod:`activelabel.server.state_check`), end the process
here, with one ``error:`` line and exit code 2, before uvicorn binds the port.
"""

from __future__ import annotations

import logging
import sys

from fastapi.middleware import Middleware
from monailabel.app import app
from monailabel.config import settings as monailabel_settings

from activelabel.errors import ActiveLabelError
from activelabel.server.monailabel_errors import install_monailabel_errors
from activelabel.server.offload import offload_blocking_endpoints
from activelabel.server.openapi_schema import install_openapi_fixes
from activelabel.server.request_guard import install_guard
from activelabel.server.routes.infer import install_infer_route
from activelabel.server.routes.labels import router as labels_router
from activelabel.server.routes.ohif import install_ohif_routes
from activelabel.server.routes.project import router as project_router
from activelabel.server.routes.uncertainty import router as uncertainty_router
from activelabel.server.state_check import check_state
from activelabel.server.storage_errors import install_storage_errors
from activelabel.server.task_guard import OneTaskAtATime
from activelabel.workers.launcher import install_task_worker

logger = logging.getLogger(__name__)

app.include_router(project_router)
app.include_router(uncertainty_router)
app.include_router(labels_router)
install_infer_route(app)
offload_blocking_endpoints(app)
install_ohif_routes(app)  # after the offload: it wraps the offloaded /info/ and /ohif endpoints
install_storage_errors(app)
install_monailabel_errors(app)  # after the offload and the infer route: it wraps their endpoints
install_openapi_fixes(app)
try:
    install_guard(app, conf=monailabel_settings.MONAI_LABEL_APP_CONF or {})
    check_state(
        monailabel_settings.MONAI_LABEL_APP_CONF or {},
        studies=monailabel_settings.MONAI_LABEL_STUDIES,
        app_dir=monailabel_settings.MONAI_LABEL_APP_DIR,
    )
except ActiveLabelError as error:
    # Printed, not logged: MONAI Label's log goes to stderr too, and the reason is one line there.
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
# Inside the access guard: an unauthenticated start request gets 401, not 429.
app.user_middleware.append(Middleware(OneTaskAtATime))
# Train/scoring/batch-infer tasks fork from a pre-imported worker instead of a fresh interpreter.
install_task_worker(
    conf=monailabel_settings.MONAI_LABEL_APP_CONF or {}, app_dir=monailabel_settings.MONAI_LABEL_APP_DIR
)

__all__ = ["app"]

"""The OpenAI-compatible HTTP API, one package per endpoint group, each a thin `router`, its wire types
(`protocol`) and the `service` that calls the domain."""

from .chat.router import router as chat
from .content_filters.router import router as content_filters
from .deployments.router import router as deployments
from .evals.router import router as evals
from .evaluations.router import router as evaluations
from .exports.router import router as exports
from .files.router import router as files
from .jobs.router import router as jobs
from .models.router import router as models
from .pairs.router import router as pairs
from .storage.router import router as storage
from .stored.router import router as stored
from .uploads.router import router as uploads

ROUTERS = (files, uploads, jobs, models, chat, deployments, content_filters, evaluations, storage, exports,
           stored, evals, pairs)

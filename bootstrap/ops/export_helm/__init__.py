"""export-helm: the same PKI, tokens and policy as data for the official Temporal Helm chart.

Pure apart from reading the bundle: render_export returns {relative path: (bytes, mode)}. Every
Secret holds what one consumer needs and nothing else; the templates in templates/helm/ shape the
text. Output depends only on bundle.yaml and the files in the bundle, never on the clock, so a
re-export is byte-equal.

  export.py          the checks before an export, and render_export itself
  values.py          the chart version, images, ports and mounts: the templates' values
  bundle_secrets.py  the Secrets, each for one consumer
  verify_job.py      the verify Job's role Secret and its routes to each listener
  names.py           our objects' names and the chart's Service names and labels
"""

from .export import check_exportable, composed_server_tls, render_export
from .names import bundle_labels, chart_service, names
from .values import CHART_VERSION, DEFAULT_IMAGES
from .verify_job import VERIFY_COMPONENT, verify_routes

__all__ = [
    "CHART_VERSION",
    "DEFAULT_IMAGES",
    "VERIFY_COMPONENT",
    "bundle_labels",
    "chart_service",
    "check_exportable",
    "composed_server_tls",
    "names",
    "render_export",
    "verify_routes",
]

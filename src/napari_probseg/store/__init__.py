"""Multi-rater annotation project store (zarr v3, OME-Zarr 0.5 where it applies).

A store is a directory that other NGFF tools open: each image is an OME-Zarr 0.5 image, and each
rater's latest annotation is an OME-Zarr label image under that image's ``labels/``. Everything
else (history, drafts, predictions) lives in zarr groups beside it. Layout (schema version 1)::

    project.zarr/
      zarr.json                          root group; attributes.probseg = {kind: "project",
                                         schema_version, created, software, class_names}
      .probseg/                          internal (a zarr group): locks/<image_id>.lock, tmp/ staging
      images/zarr.json
      images/<image_id>/zarr.json        OME-Zarr image: ome.multiscales (axes z,y,x or y,x, type
                                         space, scale transform) + probseg image record
      images/<image_id>/0/               the image array (dimension_names z, y, x)
      images/<image_id>/labels/zarr.json ome.labels = [raters with a committed annotation]
      images/<image_id>/labels/<rater>/  OME label image (image-label, source ../../) mirroring the
                                         rater's latest version (array vNNNNNN named by its
                                         multiscales) -- DERIVED state, rebuilt on demand
      images/<image_id>/annotations/<rater>/zarr.json
                                         attributes.probseg.versions = [AnnotationVersion, ...]
                                         -- the commit point, replaced atomically
      images/<image_id>/annotations/<rater>/v000001/, v000002/, ...
                                         immutable version arrays; unchanged chunk files are hard
                                         links to the previous version's
      images/<image_id>/drafts/<rater>/  autosaved draft (pointer zarr.json + one array)
      images/<image_id>/predictions/<run_id>/
                                         a run: arrays (samples as small uints, probabilities,
                                         uncertainty maps) + attributes.probseg.metadata (JSON:
                                         provenance, regions, scores)

Every array records, in its ``zarr.json``, a checksum of each chunk file and of its decoded
content; reads and :meth:`ProjectStore.verify` use them to name damaged files.

Safety:

- A save writes the new version completely in ``.probseg/tmp`` (same file system), renames it
  into ``annotations/<rater>/vNNNNNN``, then commits by atomically replacing the rater's
  ``zarr.json`` (``os.replace`` + fsync). Only then is the derived ``labels/<rater>`` published:
  a complete new array beside the current one, made current by replacing the label group's
  ``zarr.json`` atomically (NGFF readers never see a mix). A process killed at any point
  leaves every committed version intact; a stale or half-updated label image is detected by its
  recorded version and rebuilt when the store is opened read-write (or by ``verify(repair=True)``).
- Commits on one image are serialised by ``fcntl.flock`` on ``.probseg/locks/<image_id>.lock``.
  A save whose ``parent_version`` is no longer the rater's latest becomes a new version with
  ``conflict=True`` (and ``based_on``); nothing is overwritten.
- Image, rater and run ids are validated identifiers (:func:`validate_identifier`), never raw paths.
- The store never follows a symbolic link: every write and delete checks its target
  (``_fs.check_within``), and a store holding a link is refused by :meth:`ProjectStore.open`
  with :class:`StoreLinkError` (``ProjectStore.open(path, mode="r", allow_links=True).verify()``
  lists them).

The ``probseg`` schema version is in the root attributes; opening a store written by a newer
schema raises :class:`StoreVersionError`. ``docs/STORE.md`` describes the layout in more detail.
"""

from napari_probseg.store._errors import (
    InvalidIdentifierError,
    StoreCorruptionError,
    StoreError,
    StoreLinkError,
    StoreVersionError,
)
from napari_probseg.store._export import export_store, majority_vote
from napari_probseg.store._meta import (
    KNOWN_TOOLS,
    ROLES,
    SCHEMA_VERSION,
    AnnotationVersion,
    DraftInfo,
    Problem,
    validate_identifier,
)
from napari_probseg.store._project import ProjectStore

__all__ = [
    "KNOWN_TOOLS",
    "ROLES",
    "SCHEMA_VERSION",
    "AnnotationVersion",
    "DraftInfo",
    "InvalidIdentifierError",
    "Problem",
    "ProjectStore",
    "StoreCorruptionError",
    "StoreError",
    "StoreLinkError",
    "StoreVersionError",
    "export_store",
    "majority_vote",
    "validate_identifier",
]

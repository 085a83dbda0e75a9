"""Full consistency check (and repair of derived state) of a project store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari_probseg.store._arrays import check_array
from napari_probseg.store._errors import StoreCorruptionError
from napari_probseg.store._fs import find_links, read_attrs, read_json
from napari_probseg.store._meta import Problem, validate_identifier


class VerifyMixin:
    """:meth:`verify` of :class:`ProjectStore`."""

    def verify(self, *, repair: bool = False) -> list[Problem]:
        """Check every array, chunk, version and metadata file; return the problems found.

        Committed data (images, annotation versions, drafts, predictions) is checked chunk by chunk
        against its recorded checksums and decoded in full; damage is an ``"error"`` naming the file.
        The derived OME label images are compared with the latest versions; if stale or damaged
        they are ``"error"`` problems with ``repairable=True``. Leftovers of interrupted writes
        are ``"warning"`` problems.

        Parameters
        ----------
        repair : bool
            Rebuild derived label images and remove uncommitted leftovers (needs mode ``"r+"``).

        Returns
        -------
        list of Problem
            Empty when the store is intact.
        """
        if repair:
            self._check_writable()
        problems: list[Problem] = [
            Problem(
                "error",
                str(link),
                f"symbolic link (to {os.readlink(link)!r}); the store never follows links and "
                "cannot be opened while it holds one -- remove it",
            )
            for link in find_links(self.path)
        ]
        if problems and repair:
            self._check_links(self.path / "images")  # raises StoreLinkError naming the first
        if problems:  # reading on would follow them
            return problems
        cache: dict[tuple[int, ...], str] = {}
        idle = set(self._idle_owners())  # a writer at work now is no leftover
        for entry in sorted(self._tmp.iterdir()) if self._tmp.is_dir() else []:
            if entry.name.split("+")[0] in idle:
                problems.append(
                    Problem(
                        "warning", str(entry), "leftover of an interrupted write", repairable=True
                    )
                )
        if repair:
            for owner in idle:
                with self._writing(owner):
                    pass  # _writing cleans the owner's leftovers under its lock
        base = self.path / "images"
        for entry in sorted(base.iterdir()) if base.is_dir() else []:
            if entry.name == "zarr.json":
                continue
            try:
                validate_identifier(entry.name, "image_id")
            except ValueError:
                problems.append(
                    Problem("warning", str(entry), "unexpected entry (not an image id)")
                )
                continue
            if repair:  # the repair takes the image's write lock itself
                problems.extend(self._verify_image(entry.name, cache, repair))
            else:  # commits running meanwhile wait, so nothing half-written is reported
                with self._reading(entry.name):
                    problems.extend(self._verify_image(entry.name, cache, repair))
        return problems

    def _verify_image(self, image_id: str, cache: dict, repair: bool) -> list[Problem]:
        directory = self._image_dir(image_id)
        try:
            info = self.image_info(image_id)
        except StoreCorruptionError as exc:
            return [Problem("error", exc.path, exc.reason)]
        except ValueError as exc:
            return [Problem("error", str(directory / "zarr.json"), str(exc))]
        out = check_array(
            directory / "0",
            shape=info["shape"],
            dtype=info["dtype"],
            expected_hash=info["content_hash"],
            cache=cache,
        )
        out += self._verify_annotations(image_id, cache, repair)
        out += self._verify_drafts(image_id, cache)
        out += self._verify_predictions(image_id, cache)
        return out

    def _verify_annotations(self, image_id: str, cache: dict, repair: bool) -> list[Problem]:
        from napari_probseg.store._labels import version_name

        out: list[Problem] = []
        base = self._image_dir(image_id) / "annotations"
        raters: list[str] = []
        for entry in sorted(base.iterdir()) if base.is_dir() else []:
            if entry.name == "zarr.json":
                continue
            try:
                validate_identifier(entry.name, "rater")
                versions = self._load_versions(image_id, entry.name)
            except ValueError:
                out.append(Problem("warning", str(entry), "unexpected entry (not a rater id)"))
                continue
            except FileNotFoundError:
                out.append(Problem("warning", str(entry), "directory without version history"))
                continue
            except StoreCorruptionError as exc:
                out.append(Problem("error", exc.path, exc.reason))
                continue
            if versions:
                raters.append(entry.name)
            committed = {version_name(v.version) for v in versions}
            for v in versions:
                out += check_array(
                    entry / version_name(v.version),
                    shape=v.shape,
                    dtype=v.dtype,
                    expected_hash=v.content_hash,
                    cache=cache,
                )
            for child in sorted(entry.iterdir()):
                if child.is_dir() and child.name not in committed:
                    out.append(
                        Problem(
                            "warning",
                            str(child),
                            "uncommitted version left by an interrupted save",
                            repairable=True,
                        )
                    )
        out += self._verify_labels(image_id, raters, cache)
        if repair and any(p.repairable for p in out):
            self._repair_image(image_id)
            out = [
                Problem(p.severity, p.path, p.message, p.repairable, repaired=p.repairable)
                for p in out
            ]
        return out

    def _verify_labels(self, image_id: str, raters: list[str], cache: dict) -> list[Problem]:
        found: list[Problem] = []
        labels_dir = self._image_dir(image_id) / "labels"
        for rater in raters:
            latest = self._load_versions(image_id, rater)[-1]
            label_dir = self._label_dir(image_id, rater)
            if not self._label_is_current(image_id, rater, latest):
                found.append(
                    Problem(
                        "error",
                        str(label_dir),
                        f"OME label image is not rater {rater!r}'s latest version {latest.version}",
                        repairable=True,
                    )
                )
                continue
            from napari_probseg.store._labels import _current_array

            found += check_array(
                label_dir / str(_current_array(label_dir)),
                expected_hash=latest.content_hash,
                repairable=True,
                cache=cache,
            )
        try:
            listed: Any = read_json(labels_dir / "zarr.json")["attributes"]["ome"]["labels"]
        except StoreCorruptionError as exc:
            listed = exc.reason
        except (FileNotFoundError, KeyError, TypeError):
            listed = None
        if listed != raters:
            found.append(
                Problem(
                    "error",
                    str(labels_dir / "zarr.json"),
                    f"'labels' lists {listed!r}, expected {raters!r}",
                    repairable=True,
                )
            )
        for entry in sorted(labels_dir.iterdir()) if labels_dir.is_dir() else []:
            if entry.is_dir() and entry.name not in raters:
                found.append(
                    Problem(
                        "warning", str(entry), "label image of no committed rater", repairable=True
                    )
                )
        return found

    def _repair_image(self, image_id: str) -> None:
        from napari_probseg.store._fs import remove_tree
        from napari_probseg.store._labels import version_name

        base = self._image_dir(image_id) / "annotations"
        with self._writing(image_id) as stage:
            for entry in base.iterdir() if base.is_dir() else []:
                if not entry.is_dir():
                    continue
                try:
                    committed = {
                        version_name(v.version) for v in self._load_versions(image_id, entry.name)
                    }
                except (ValueError, FileNotFoundError, StoreCorruptionError):
                    continue
                for child in entry.iterdir():
                    if child.is_dir() and child.name not in committed:
                        remove_tree(child, staging=stage)
        self._repair_labels(image_id)

    def _verify_drafts(self, image_id: str, cache: dict) -> list[Problem]:
        out: list[Problem] = []
        for rater in self.draft_raters(image_id):
            directory = self._draft_dir(image_id, rater)
            try:
                pointer = self._draft_pointer(image_id, rater) or read_attrs(directory, "draft")
                info = pointer["info"]
                out += check_array(
                    directory / pointer["current"],
                    shape=tuple(info["shape"]),
                    dtype=info["dtype"],
                    expected_hash=info["content_hash"],
                    cache=cache,
                )
            except StoreCorruptionError as exc:
                out.append(Problem("error", exc.path, exc.reason))
            except (KeyError, TypeError) as exc:
                out.append(
                    Problem("error", str(directory / "zarr.json"), f"malformed draft ({exc!r})")
                )
        return out

    def _verify_predictions(self, image_id: str, cache: dict) -> list[Problem]:
        out: list[Problem] = []
        base: Path = self._image_dir(image_id) / "predictions"
        for entry in sorted(base.iterdir()) if base.is_dir() else []:
            if not entry.is_dir():
                continue
            try:
                attrs = read_attrs(entry, "prediction")
                for name, rec in attrs["arrays"].items():
                    validate_identifier(name, "array")  # a name from the store, never a path
                    out += check_array(
                        entry / name,
                        shape=tuple(rec["shape"]),
                        dtype=rec["dtype"],
                        expected_hash=rec["content_hash"],
                        cache=cache,
                    )
            except StoreCorruptionError as exc:
                out.append(Problem("error", exc.path, exc.reason))
            except FileNotFoundError:
                out.append(Problem("warning", str(entry), "run directory without metadata"))
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                out.append(Problem("error", str(entry / "zarr.json"), f"malformed run ({exc})"))
        return out

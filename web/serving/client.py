"""``RFUAVClient``'s serving methods (``contract/SERVING.md``): deployments and predictions.

    client.deploy("uav", from_task=task_id, device="cpu", replicas=2)
    client.wait_deployment("uav")                      # until ready (or failed)
    answer = client.predict("uav", raw=Path("x.png").read_bytes())
    print(answer["class_name"], answer["top_k"][0]["probability"])
    client.undeploy("uav")

Like every client method they return the envelope's ``data`` and raise ``RFUAVError`` for an
error answer. Arrays (numpy or nested lists) are sent as JSON lists.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from protocol import serving as sv

#: A deployment's statuses it never leaves by itself.
ENDED = frozenset({sv.FAILED, sv.STOPPED})


def _plain(value: Any) -> Any:
    """A numpy array (or anything with ``tolist``) as nested lists; other values as they are."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def _path(name: str) -> str:
    return "/api/v2/serving/" + quote(name, safe="")


class ServingMethods:
    """Mixed into ``web.client.RFUAVClient``, whose ``request`` they use."""

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        *,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> Any:
        raise NotImplementedError

    # -- deployments -----------------------------------------------------------------------
    def deploy(
        self,
        name: str,
        *,
        from_task: str | None = None,
        cfg_path: str | None = None,
        weight_path: str | None = None,
        **settings: Any,
    ) -> dict[str, Any]:
        """Deploy a completed training (``from_task``) or ``cfg_path`` + ``weight_path``;
        ``settings``: device, replicas, threads, max_batch_size, max_batch_delay_ms, max_queue,
        cache_size, top_k, replace. Answers the deployment, ``loading``."""
        body = {"name": name, "from_task": from_task, "cfg_path": cfg_path, "weight_path": weight_path, **settings}
        return self.request("POST", "/api/v2/serving/deploy", {k: v for k, v in body.items() if v is not None})  # type: ignore[no-any-return]

    def deployments(self) -> list[dict[str, Any]]:
        """Every deployment."""
        return self.request("GET", "/api/v2/serving")["deployments"]  # type: ignore[no-any-return]

    def deployment(self, name: str) -> dict[str, Any]:
        return self.request("GET", _path(name))  # type: ignore[no-any-return]

    def undeploy(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", _path(name))  # type: ignore[no-any-return]

    def reload(self, name: str, **source: Any) -> dict[str, Any]:
        """Swap in new weights (``from_task``, or ``cfg_path`` + ``weight_path``; none: the same
        files again) with zero downtime; the version goes up by one once the new replicas serve."""
        body = {k: v for k, v in source.items() if v is not None}
        return self.request("POST", _path(name) + "/reload", body or None)  # type: ignore[no-any-return]

    def wait_deployment(
        self, name: str, status: str = sv.READY, timeout: float = 120.0, *, version: int | None = None
    ) -> dict[str, Any]:
        """Poll the deployment until it has ``status`` (and ``version``, if given) or has ended
        (failed, stopped: check ``status`` of the answer); ``TimeoutError`` past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            dep = self.deployment(name)
            if dep["status"] == status and (version is None or dep["version"] == version):
                return dep
            if dep["status"] in ENDED:
                return dep
            if time.monotonic() >= deadline:
                raise TimeoutError(f"deployment {name}: not {status} within {timeout:g} s (it is {dep['status']})")
            time.sleep(0.1)

    # -- predictions -----------------------------------------------------------------------
    def predict(
        self,
        name: str,
        *,
        input: Any = None,
        image: Any = None,
        image_base64: str | None = None,
        path: str | None = None,
        raw: bytes | None = None,
        content_type: str = "image/png",
    ) -> dict[str, Any]:
        """One prediction, from exactly one of: ``input`` (a model-ready tensor (3, S, S)),
        ``image`` (pixels (H, W, 3) or (H, W), 0-255), ``image_base64`` (a PNG or JPEG file's
        bytes, base64), ``path`` (an image file inside the data roots), or ``raw`` (a PNG or JPEG
        file's bytes, sent as the body with ``content_type``)."""
        forms = {"input": _plain(input), "image": _plain(image), "image_base64": image_base64, "path": path}
        given = {k: v for k, v in forms.items() if v is not None}
        url = _path(name) + "/predict"
        if raw is not None:
            if given:
                raise ValueError(f"give raw or one of {', '.join(forms)}, not both")
            return self.request("POST", url, content=raw, content_type=content_type)  # type: ignore[no-any-return]
        return self.request("POST", url, given)  # type: ignore[no-any-return]

    def predict_batch(self, name: str, **forms: Any) -> dict[str, Any]:
        """Several predictions in input order, from one of ``batch_inputs`` (tensors),
        ``images`` (pixels), ``images_base64`` or ``paths``: ``{"results": [...], "model",
        "version"}``."""
        body = {k: [_plain(x) for x in v] for k, v in forms.items() if v is not None}
        return self.request("POST", _path(name) + "/predict_batch", body)  # type: ignore[no-any-return]

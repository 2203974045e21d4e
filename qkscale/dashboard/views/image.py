"""The image view (vision stores): the image, one patch outlined, every patch shaded by its attention."""

from __future__ import annotations

import html

import pandas as pd
import panel as pn
import param

from qkscale.dashboard import image
from qkscale.dashboard.data import DashboardData, attention_line
from qkscale.dashboard.views.base import View, guarded, lazy, on_tap, plot


class ImageView(View):
    """Image ``state.doc``: the clicked patch's (``state.token``) attention, or the [CLS] token's."""

    @classmethod
    def available(cls, data: DashboardData) -> bool:
        return data.store.modality == "image"

    def __panel__(self):
        return pn.Column(
            pn.widgets.IntInput.from_param(self.state.param.doc, label="image", width=140), lazy(self._image)
        )

    @param.depends("state.doc", "state.token", "state.token_kind", "state.layer", "state.head", "state.hide_special")
    @guarded
    def _image(self):
        state, store = self.state, self.data.store
        grid = image.patch_grid(store.preprocessing)
        tokens = self.data.document_tokens(state.doc)
        n_prefix = int((tokens["patch_row"] < 0).sum())
        in_doc = state.token in set(tokens["id"])
        position = state.token - int(tokens["id"].iat[0]) if in_doc else 0  # default: the [CLS] token
        weights, _ = self.data.attention(state.doc, state.layer, state.head, False)
        patches = attention_line(weights, position, state.token_kind if in_doc else "q")[n_prefix:]
        patch = divmod(position - n_prefix, grid[1]) if position >= n_prefix else None
        element = image.image_view(store.thumbnail(state.doc), grid, patches, patch)
        on_tap(element, lambda x, y: self.pick_patch(tokens, n_prefix, grid, x, y))
        name = tokens["token"].iat[position]
        title = html.escape(str(tokens["image"].iat[0]))
        caption = pn.pane.HTML(f"<b>{title}</b>: {html.escape(name)}'s attention, L{state.layer}H{state.head}")
        return pn.Column(caption, plot(element, css_classes=["qk-image"]))

    def pick_patch(self, tokens: pd.DataFrame, n_prefix: int, grid: tuple[int, int], x: float, y: float) -> None:
        """Select the patch under the click (x, y) as a query."""
        patch = image.patch_at(grid, x, y)
        if patch is not None:
            token = int(tokens["id"].iat[n_prefix + patch[0] * grid[1] + patch[1]])
            self.state.param.update(token=token, token_kind="q")

"""What every spinenet checkpoint holds besides the weights: the run config and the model contract."""

from __future__ import annotations

from typing import Any

from spinenet.contract import CONTRACT_KEY, ModelContract


class WritesContract:
    """Mixin of the LightningModules: ``on_save_checkpoint`` stores ``run_config`` (under ``spinenet``) and the
    :class:`~spinenet.contract.ModelContract` built from it (under :data:`~spinenet.contract.CONTRACT_KEY`).

    ``training_data`` (set by :func:`spinenet.tasks.train.train`): the training data's fingerprint."""

    run_config: dict[str, Any]
    training_data: dict[str, Any] | None = None
    _contract: ModelContract | None = None

    def model_contract(self) -> ModelContract | None:
        """The contract of this module as trained so far (None for a module built without a run config)."""
        if not self.run_config.get("data"):
            return None
        if self._contract is None:  # built once: the crop recipe may be read from a file
            self._contract = ModelContract.from_run_config(self.run_config, training_data=self.training_data)
        table = getattr(self, "level_offset_table", None)
        return self._contract.with_level_offsets(table() if callable(table) else None)  # trained: read each time

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["spinenet"] = self.run_config
        contract = self.model_contract()
        if contract is not None:
            checkpoint[CONTRACT_KEY] = contract.to_dict()

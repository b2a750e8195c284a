"""The trainable stages behind one interface (`base.Stage`), by name in `registry`."""

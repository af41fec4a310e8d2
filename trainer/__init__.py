"""The engine: builder, extension points (hooks), the training loop and the other stages; it names no method."""

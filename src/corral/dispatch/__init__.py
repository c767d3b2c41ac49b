"""The dispatch core shared by both modes: queues, batches, replica state, and computing a batch."""

"""Training: the state, the pure steps, the one loop (`fit`), and how steps are compiled."""

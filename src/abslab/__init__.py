"""abslab: MNIST defenses (ABS and its baselines) and the attacks that test them."""

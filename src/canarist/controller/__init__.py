"""The controller: walks rollouts through their plans and converges the world to the store."""

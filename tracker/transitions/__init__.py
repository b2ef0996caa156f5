"""The one transition path: ``plans`` decides a change and all that follows it, ``writes`` stores it."""

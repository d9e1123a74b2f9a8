"""What models need and what engines use: estimates from model files, measurements
of running engines, and the memory budget of the machine."""

"""Drop-ins for the reference models that compute the same function faster on CPU. Each is
chosen in one place, `route.CPURoute`, and checked against its reference by a test."""

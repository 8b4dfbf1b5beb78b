"""Network simulation for tests and benchmarks: a faulty relay and a lossy
network namespace. Imports nothing of the project.
"""

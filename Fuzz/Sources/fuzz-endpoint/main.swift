import FuzzTargets

runFuzzer(fuzzEndpoint)

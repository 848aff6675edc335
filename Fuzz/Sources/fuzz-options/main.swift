import FuzzTargets

runFuzzer(fuzzOptions)

//go:build powercut

package powercut

func runChildNATS(path string) int { return 1 }

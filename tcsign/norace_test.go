//go:build !race

package tcsign

const raceEnabled = false

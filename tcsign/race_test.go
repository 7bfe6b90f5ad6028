//go:build race

package tcsign

const raceEnabled = true

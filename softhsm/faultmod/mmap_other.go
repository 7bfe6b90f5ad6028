//go:build !unix

package faultmod

import "errors"

func mapFile(string, int) ([]byte, error) {
	return nil, errors.New("the fault-injection module needs a Unix system (mmap, dlopen)")
}

func unmapFile([]byte) error { return nil }

package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"hsmkms/audit"
)

// auditCmd is `kmsctl audit verify FILE`: it checks the hash chain of an
// audit trail offline and reports every line that was edited, deleted or
// moved. It exits non-zero if the chain is broken.
func auditCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) != 2 || args[0] != "verify" {
		return errors.New("usage: kmsctl audit verify FILE")
	}
	f, err := os.Open(args[1])
	if err != nil {
		return err
	}
	defer f.Close()
	n, problems, err := audit.Verify(f)
	if err != nil {
		return fmt.Errorf("audit verify: %w", err)
	}
	for _, p := range problems {
		fmt.Fprintf(stdout, "line %d: %s\n", p.Line, p.Reason)
	}
	if len(problems) > 0 {
		return fmt.Errorf("audit verify: %s: %d problem(s) in %d lines: the trail was altered", args[1], len(problems), n)
	}
	fmt.Fprintf(stdout, "%s: %d lines, hash chain intact\n", args[1], n)
	return nil
}

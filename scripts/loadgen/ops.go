package main

import (
	"encoding/json"
	"fmt"
)

// opSpec is one operation of the main run.
type opSpec struct {
	name  string
	src   func(w int) source
	avail string // "" when available, else why not
	// tgt is the server the op drives; nil means kmsd.
	tgt target
}

// buildOps makes the request pools of the main run.
func buildOps(host, keyID string, size int) ([]opSpec, func(), error) {
	const poolSize = 64
	var encBodies, decBodies [][]byte
	for range poolSize {
		b, _ := json.Marshal(map[string]string{"KeyId": keyID, "Plaintext": randomB64(size), "EncryptionContext": benchContext})
		encBodies = append(encBodies, b)
	}
	for _, eb := range encBodies {
		var p map[string]string
		_ = json.Unmarshal(eb, &p)
		r, err := mustOK(call(host, "Encrypt", p))
		if err != nil {
			return nil, nil, fmt.Errorf("encrypt (set-up): %w", err)
		}
		blob, _ := r["CiphertextBlob"].(string)
		b, _ := json.Marshal(map[string]string{"CiphertextBlob": blob, "EncryptionContext": benchContext})
		decBodies = append(decBodies, b)
	}
	encPool := newTC3Pool(host, "Encrypt", encBodies)
	decPool := newTC3Pool(host, "Decrypt", decBodies)
	pools := []*tc3Pool{encPool, decPool}
	ops := []opSpec{
		{name: "encrypt", src: func(w int) source { return &poolSource{p: encPool} }},
		{name: "decrypt", src: func(w int) source { return &poolSource{p: decPool} }},
	}
	// GenerateDataKey: used only if kmsd serves it.
	gdkParams := map[string]any{"KeyId": keyID, "KeySpec": "AES_256", "EncryptionContext": benchContext}
	gdk := opSpec{name: "generatedatakey"}
	resp, err := call(host, "GenerateDataKey", gdkParams)
	switch code, msg := apiError(resp); {
	case err != nil:
		gdk.avail = err.Error()
	case code == "InvalidAction":
		gdk.avail = "kmsd has no GenerateDataKey action yet"
	case code != "":
		gdk.avail = "GenerateDataKey answered " + code + ": " + msg
	default:
		b, _ := json.Marshal(gdkParams)
		p := newTC3Pool(host, "GenerateDataKey", [][]byte{b})
		pools = append(pools, p)
		gdk.src = func(w int) source { return &poolSource{p: p} }
	}
	ops = append(ops, gdk)
	ptB64 := randomB64(size)
	ls := newLegacySource(host, keyID, ptB64)
	if err := ls.check(keyID, ptB64); err != nil {
		return nil, nil, err
	}
	ops = append(ops, opSpec{name: "legacy-encrypt", src: func(w int) source { c := *ls; c.buf = nil; return &c }})
	awsOp, awsPool := awsEncryptOp(host, keyID, size)
	if awsPool != nil {
		pools = append(pools, awsPool)
	}
	ops = append(ops, awsOp)
	return ops, func() {
		for _, p := range pools {
			p.close()
		}
	}, nil
}

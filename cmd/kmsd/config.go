package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"hsmkms/hsm/p11"
)

// fileConfig is the configuration file (kmsd -config kmsd.yaml). Unknown
// keys are errors. Secrets appear only by reference: the PIN and the TLS key
// are named by file or environment variable, never written in the file.
// Every setting can be overridden by its environment variable (KMSD_...),
// and the most common ones by a flag; precedence is flag > environment >
// file > default. kmsd.example.yaml documents every key.
type fileConfig struct {
	Listen struct {
		Address        string `yaml:"address"`
		AllowPlainHTTP bool   `yaml:"allow_plain_http"`
		HTTPServer     string `yaml:"http_server"`
	} `yaml:"listen"`
	TLS struct {
		CertFile     string `yaml:"cert_file"`
		KeyFile      string `yaml:"key_file"`
		ClientCAFile string `yaml:"client_ca_file"`
	} `yaml:"tls"`
	PKCS11 struct {
		Module         string   `yaml:"module"`
		TokenLabel     string   `yaml:"token_label"`
		TokenURI       string   `yaml:"token_uri"`
		InitArgs       string   `yaml:"init_args"`
		PINFile        string   `yaml:"pin_file"`
		PINEnv         string   `yaml:"pin_env"`
		Sessions       int      `yaml:"sessions"`
		AcquireTimeout duration `yaml:"acquire_timeout"`
		IVMode         string   `yaml:"iv_mode"`
		// WorkingCopies is a pointer so that an absent key keeps the
		// default (on) while "false" turns copies off.
		WorkingCopies     *bool    `yaml:"working_copies"`
		CopyCheckInterval duration `yaml:"copy_check_interval"`
	} `yaml:"pkcs11"`
	Store struct {
		DataDir string `yaml:"data_dir"`
		// Postgres, when dsn_file is set, replaces the embedded SQLite
		// store with a PostgreSQL database shared by several nodes.
		Postgres struct {
			DSNFile        string   `yaml:"dsn_file"`
			MaxConns       int      `yaml:"max_conns"`
			StaleAfter     duration `yaml:"stale_after"`
			ResyncInterval duration `yaml:"resync_interval"`
			AllowVerifyCA  bool     `yaml:"allow_verify_ca"`
		} `yaml:"postgres"`
	} `yaml:"store"`
	Audit struct {
		File               string   `yaml:"file"`
		Disabled           bool     `yaml:"disabled"`
		RefusalInterval    duration `yaml:"refusal_interval"`
		NodeID             string   `yaml:"node_id"`
		CheckpointLines    int64    `yaml:"checkpoint_lines"`
		CheckpointInterval duration `yaml:"checkpoint_interval"`
	} `yaml:"audit"`
	Limits struct {
		MaxBodyBytes          int64    `yaml:"max_body_bytes"`
		ReadHeaderTimeout     duration `yaml:"read_header_timeout"`
		ReadTimeout           duration `yaml:"read_timeout"`
		WriteTimeout          duration `yaml:"write_timeout"`
		IdleTimeout           duration `yaml:"idle_timeout"`
		RequestTimeout        duration `yaml:"request_timeout"`
		MaxConcurrentRequests int      `yaml:"max_concurrent_requests"`
		RatePerCredential     float64  `yaml:"rate_per_credential"`
		BurstPerCredential    int      `yaml:"burst_per_credential"`
		// Pointers so that an explicit 0 (no limit) differs from absent.
		MaxConnections           *int `yaml:"max_connections"`
		MaxConnectionsPerAddress *int `yaml:"max_connections_per_address"`
	} `yaml:"limits"`
	Keys struct {
		Limit                int    `yaml:"limit"`
		UsageLimitPerVersion uint64 `yaml:"usage_limit_per_version"`
		Region               string `yaml:"region"`
	} `yaml:"keys"`
	Log struct {
		Level string `yaml:"level"`
	} `yaml:"log"`
	Runtime struct {
		GCHeapFloorBytes *int64 `yaml:"gc_heap_floor_bytes"`
	} `yaml:"runtime"`
	Auth struct {
		RequireSignedAction bool     `yaml:"require_signed_action"`
		AllowedHosts        []string `yaml:"allowed_hosts"`
		TC3Services         []string `yaml:"tc3_services"`
	} `yaml:"auth"`
	// AWS enables the AWS KMS API (httpapi/aws.go) on the API listener.
	AWS struct {
		Regions   []string `yaml:"regions"`
		AccountID string   `yaml:"account_id"`
	} `yaml:"aws"`
}

// duration is a time.Duration written as "5s", "100ms"...
type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 5s or 250ms", n.Line, n.Value)
	}
	*d = duration(v)
	return nil
}

// loadConfigFile reads and strictly decodes a configuration file.
func loadConfigFile(path string) (fileConfig, error) {
	var fc fileConfig
	b, err := os.ReadFile(path)
	if err != nil {
		return fc, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
		return fc, fmt.Errorf("config %s: %w", path, err)
	}
	var extra any
	if err := dec.Decode(&extra); err == nil {
		return fc, fmt.Errorf("config %s: more than one YAML document", path)
	}
	// Relative paths in the file are relative to the file's directory.
	base := filepath.Dir(path)
	for _, p := range []*string{&fc.PKCS11.Module, &fc.TLS.CertFile, &fc.TLS.KeyFile, &fc.TLS.ClientCAFile, &fc.PKCS11.PINFile, &fc.Store.DataDir, &fc.Audit.File, &fc.Store.Postgres.DSNFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return fc, nil
}

// p11Config is the token configuration kmsd (and check-config) opens.
func (c config) p11Config(obs p11.Observer) p11.Config {
	return p11.Config{ModulePath: c.module, TokenLabel: c.tokenLabel, TokenURI: c.tokenURI, InitArgs: c.initArgs, PIN: c.pin, Sessions: c.sessions,
		HSMGeneratedIV: c.ivMode == "hsm", NoWorkingCopies: !c.workingCopies, CopyCheckInterval: c.copyCheck, Observer: obs}
}

// tokenName names the configured token in messages: its label in quotes or
// its URI.
func (c config) tokenName() string {
	if c.tokenURI != "" {
		return c.tokenURI
	}
	return strconv.Quote(c.tokenLabel)
}

// isLoopback reports whether a listen address only accepts local
// connections.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// readPIN takes the PIN from an environment variable (KMSD_PIN, or the
// one named by pkcs11.pin_env) or from a file, never from a flag value or
// the configuration file. Exactly one source must be given.
func readPIN(file, envName string, env func(string) (string, bool)) (string, error) {
	envPIN, hasEnv := env(envName)
	switch {
	case hasEnv && file != "":
		return "", fmt.Errorf("the PIN is given twice: set either %s or -pin-file, not both", envName)
	case hasEnv:
		if envPIN == "" {
			return "", fmt.Errorf("%s is empty", envName)
		}
		return envPIN, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("-pin-file: %v", err)
		}
		pin := strings.TrimRight(string(b), "\r\n")
		if pin == "" {
			return "", fmt.Errorf("-pin-file %q is empty", file)
		}
		return pin, nil
	}
	return "", fmt.Errorf("no PIN: set %s or -pin-file (KMSD_PIN_FILE)", envName)
}

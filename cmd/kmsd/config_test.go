package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	module := writeFile(t, dir, "module.so", "")
	writeFile(t, dir, "pin", "1234\n")
	tests := []struct {
		name  string
		file  string
		env   map[string]string
		args  []string
		want  string // substring of the error, or "" for success
		check func(t *testing.T, c config)
	}{
		{name: "example file", file: "", args: []string{"-config", "../../kmsd.example.yaml", "-module", module}, env: map[string]string{"KMSD_PIN": "1"},
			check: func(t *testing.T, c config) {
				if c.tokenLabel != "hsmkms" || c.sessions != 2 || c.maxConcurrent != 1024 || c.usageLimit != 1<<30 || c.ivMode != "caller" ||
					!c.workingCopies || c.copyCheck != time.Minute || c.maxConns != 4096 || c.maxConnsPerIP != 256 || c.refusalAudit != time.Minute {
					t.Fatalf("%+v", c)
				}
			}},
		{name: "values and relative paths", file: "pkcs11:\n  module: module.so\n  token_label: prod\n  pin_file: pin\n  sessions: 16\nlimits:\n  request_timeout: 3s\n  rate_per_credential: 50\n",
			check: func(t *testing.T, c config) {
				if c.module != module || c.tokenLabel != "prod" || c.pin != "1234" || c.sessions != 16 || c.requestTimeout.String() != "3s" || c.ratePerCred != 50 {
					t.Fatalf("%+v", c)
				}
			}},
		{name: "environment overrides the file", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n  sessions: 16\n", env: map[string]string{"KMSD_SESSIONS": "4"},
			check: func(t *testing.T, c config) {
				if c.sessions != 4 {
					t.Fatalf("sessions %d", c.sessions)
				}
			}},
		{name: "flag overrides the environment", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n", env: map[string]string{"KMSD_SESSIONS": "4"}, args: []string{"-sessions", "3"},
			check: func(t *testing.T, c config) {
				if c.sessions != 3 {
					t.Fatalf("sessions %d", c.sessions)
				}
			}},
		{name: "token URI", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n  token_uri: \"pkcs11:token=my%20token\"\n",
			check: func(t *testing.T, c config) {
				if c.tokenURI != "pkcs11:token=my%20token" || c.tokenLabel != "" || c.p11Config(nil).Validate() != nil {
					t.Fatalf("label %q, URI %q", c.tokenLabel, c.tokenURI)
				}
			}},
		{name: "token URI as p11tool prints it", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n  token_uri: \"pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=2c1f9e3b7c9d1a2e;token=hsmkms\"\n"},
		{name: "token URI with a slot id refused", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n  token_uri: \"pkcs11:token=t;slot-id=1\"\n", want: "slot ids change"},
		{name: "init args from the file", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n  init_args: \"configdir='sql:/var/lib/nss' flags=\"\n",
			check: func(t *testing.T, c config) {
				if c.initArgs != "configdir='sql:/var/lib/nss' flags=" || c.p11Config(nil).InitArgs != c.initArgs {
					t.Fatalf("init args %q", c.initArgs)
				}
			}},
		{name: "init args from the environment", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n  init_args: x\n", env: map[string]string{"KMSD_PKCS11_INIT_ARGS": "configdir='sql:/d'"},
			check: func(t *testing.T, c config) {
				if c.initArgs != "configdir='sql:/d'" {
					t.Fatalf("init args %q", c.initArgs)
				}
			}},
		{name: "working copies off", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n  working_copies: false\n  copy_check_interval: 10s\n",
			check: func(t *testing.T, c config) {
				if c.workingCopies || c.copyCheck != 10*time.Second {
					t.Fatalf("working copies %v, check %v", c.workingCopies, c.copyCheck)
				}
			}},
		{name: "working copies default on", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n", env: map[string]string{"KMSD_COPY_CHECK_INTERVAL": "2m"},
			check: func(t *testing.T, c config) {
				if !c.workingCopies || c.copyCheck != 2*time.Minute {
					t.Fatalf("working copies %v, check %v", c.workingCopies, c.copyCheck)
				}
			}},
		{name: "connection limits default", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n",
			check: func(t *testing.T, c config) {
				if c.maxConns != 4096 || c.maxConnsPerIP != 256 || c.refusalAudit != time.Minute {
					t.Fatalf("connections %d, per address %d, refusal interval %v", c.maxConns, c.maxConnsPerIP, c.refusalAudit)
				}
			}},
		{name: "connection limits off and set", file: "pkcs11:\n  module: module.so\n  pin_file: pin\nlimits:\n  max_connections: 0\n  max_connections_per_address: 32\naudit:\n  refusal_interval: 10s\n",
			env: map[string]string{"KMSD_MAX_CONNECTIONS_PER_ADDRESS": "16"},
			check: func(t *testing.T, c config) {
				if c.maxConns != 0 || c.maxConnsPerIP != 16 || c.refusalAudit != 10*time.Second {
					t.Fatalf("connections %d, per address %d, refusal interval %v", c.maxConns, c.maxConnsPerIP, c.refusalAudit)
				}
			}},
		{name: "negative connection limit", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n", args: []string{"-max-connections", "-1"}, want: "max-connections"},
		{name: "bad copy check interval", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n  copy_check_interval: -1s\n", want: "copy-check-interval"},
		{name: "unknown key", file: "pkcs11:\n  modul: module.so\n", want: "modul"},
		{name: "PIN in the URI refused", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n  token_uri: \"pkcs11:token=t?pin-value=1234\"\n", want: "pin-value"},
		{name: "bad duration", file: "limits:\n  read_timeout: soon\n", want: "duration"},
		{name: "plain HTTP on a public address", file: "listen:\n  address: 0.0.0.0:8080\npkcs11:\n  module: module.so\n  pin_file: pin\n", want: "not a loopback address"},
		{name: "plain HTTP allowed explicitly", file: "listen:\n  address: 0.0.0.0:8080\n  allow_plain_http: true\npkcs11:\n  module: module.so\n  pin_file: pin\n"},
		{name: "TLS key without certificate", file: "tls:\n  key_file: pin\npkcs11:\n  module: module.so\n  pin_file: pin\n", want: "go together"},
		{name: "usage limit above 2^32", file: "keys:\n  usage_limit_per_version: 8589934592\npkcs11:\n  module: module.so\n  pin_file: pin\n", want: "usage-limit"},
		{name: "two PIN sources", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n", env: map[string]string{"KMSD_PIN": "1"}, want: "twice"},
		{name: "no PIN", file: "pkcs11:\n  module: module.so\n", want: "no PIN"},
		{name: "deprecated http_server still loads", file: "listen:\n  http_server: h1\npkcs11:\n  module: module.so\n  pin_file: pin\n"},
		{name: "deprecated http_server stdlib", file: "listen:\n  http_server: stdlib\npkcs11:\n  module: module.so\n  pin_file: pin\n"},
		{name: "deprecated http_server misspelt", file: "listen:\n  http_server: h2\npkcs11:\n  module: module.so\n  pin_file: pin\n", want: "http-server"},
		{name: "two documents", file: "log:\n  level: info\n---\nlog:\n  level: debug\n", want: "more than one"},
		{name: "auth settings", file: "pkcs11:\n  module: module.so\n  pin_file: pin\nauth:\n  require_signed_action: true\n  allowed_hosts: [kms.corp.example, 10.0.0.5]\n  tc3_services: [kms, kmsd]\n",
			check: func(t *testing.T, c config) {
				if !c.requireSignedAction || strings.Join(c.allowedHosts, ",") != "kms.corp.example,10.0.0.5" || strings.Join(c.tc3Services, ",") != "kms,kmsd" {
					t.Fatalf("%v %q %q", c.requireSignedAction, c.allowedHosts, c.tc3Services)
				}
			}},
		{name: "auth defaults", file: "pkcs11:\n  module: module.so\n  pin_file: pin\n", env: map[string]string{"KMSD_ALLOWED_HOSTS": " a.example , b.example,"},
			check: func(t *testing.T, c config) {
				if c.requireSignedAction || strings.Join(c.allowedHosts, ",") != "a.example,b.example" || c.tc3Services != nil {
					t.Fatalf("%v %q %q", c.requireSignedAction, c.allowedHosts, c.tc3Services)
				}
			}},
		{name: "allowed host with a scheme", file: "pkcs11:\n  module: module.so\n  pin_file: pin\nauth:\n  allowed_hosts: [\"https://kms.example\"]\n", want: "allowed-hosts"},
		{name: "PostgreSQL off this machine without verify-full", file: "pkcs11:\n  module: module.so\n  pin_file: pin\nstore:\n  postgres:\n    dsn_file: dsn-prefer\n", want: "sslmode=prefer does not authenticate the server"},
		{name: "PostgreSQL with verify-ca refused by default", file: "pkcs11:\n  module: module.so\n  pin_file: pin\nstore:\n  postgres:\n    dsn_file: dsn-ca\n", want: "allow_verify_ca"},
		{name: "PostgreSQL with verify-ca allowed explicitly", file: "pkcs11:\n  module: module.so\n  pin_file: pin\nstore:\n  postgres:\n    dsn_file: dsn-ca\n    allow_verify_ca: true\n"},
		{name: "PostgreSQL with verify-full", file: "pkcs11:\n  module: module.so\n  pin_file: pin\nstore:\n  postgres:\n    dsn_file: dsn-full\n",
			check: func(t *testing.T, c config) {
				if !strings.Contains(c.pgDSN, "verify-full") {
					t.Fatalf("DSN %q", c.pgDSN)
				}
			}},
		{name: "PostgreSQL on loopback", file: "pkcs11:\n  module: module.so\n  pin_file: pin\nstore:\n  postgres:\n    dsn_file: dsn-local\n"},
	}
	writeFile(t, dir, "dsn-prefer", "postgres://kmsd:pw@db.example:5432/kms\n")
	writeFile(t, dir, "dsn-ca", "postgres://kmsd@db.example:5432/kms?sslmode=verify-ca\n")
	writeFile(t, dir, "dsn-full", "postgres://kmsd@db.example:5432/kms?sslmode=verify-full\n")
	writeFile(t, dir, "dsn-local", "postgres://kmsd@127.0.0.1:5432/kms?sslmode=disable\n")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"-config", writeFile(t, dir, "kmsd.yaml", tt.file)}, args...)
			}
			env := tt.env
			if env == nil {
				env = map[string]string{}
			}
			c, err := parseConfig(args, envOf(env), io.Discard)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one mentioning %q", err, tt.want)
			case tt.want == "" && tt.check != nil:
				tt.check(t, c)
			}
			if err != nil && strings.Contains(err.Error(), "1234") {
				t.Fatalf("the PIN leaked into an error: %v", err)
			}
		})
	}
}

func TestSchedulerProcs(t *testing.T) {
	for _, tt := range []struct {
		env  map[string]string
		def  int
		want int
	}{
		{nil, 2, 4},
		{nil, 1, 2},
		{map[string]string{"GOMAXPROCS": "3"}, 3, 3}, // the operator's value, as the runtime applied it
		{map[string]string{"GOMAXPROCS": ""}, 2, 4},
	} {
		if got := schedulerProcs(envOf(tt.env), tt.def); got != tt.want {
			t.Errorf("env %v, default %d: %d, want %d", tt.env, tt.def, got, tt.want)
		}
	}
}

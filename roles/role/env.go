package role

import (
	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/driver"
)

// Env is what the integrated roles (cnsmo-role server and agent) hand every service: the
// publisher of this instance, the runtime driver, a logger with run/instance fields, and a private
// state directory on this VM that survives a restart of the role.
type Env struct {
	Params   Publisher
	Driver   driver.Driver
	Log      zerolog.Logger
	Instance string // this VM's instance name, e.g. "web.2"
	StateDir string // persistent dir for this service on this VM (VPN CA and keys live here), 0700
	UseVPN   bool   // "vpn" is in net.services.enable
	Exec     bool   // the exec driver is used (functions are host processes, not containers)
	Endpoint string // the platform's service URL (the firewall keeps the path to it open)
	Hosts    string // the hosts file the VPN's names go into (/etc/hosts); "" leaves it alone
}

package mocknuvla_test

import (
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/mocknuvla"
)

// The Go API others code against (team contract): these fail to compile if a signature drifts.
var (
	_ func(mocknuvla.Options) *mocknuvla.Server                                  = mocknuvla.New
	_ http.Handler                                                               = (*mocknuvla.Server)(nil)
	_ func([]byte) (*mocknuvla.Deployment, error)                                = mocknuvla.ParseDeployment
	_ func(string) (*mocknuvla.Deployment, error)                                = mocknuvla.LoadDeployment
	_ func(*mocknuvla.Deployment, string, string, string) error                  = (*mocknuvla.Deployment).SetValue
	_ func(*mocknuvla.Server, *mocknuvla.Deployment) (*mocknuvla.RunInfo, error) = (*mocknuvla.Server).CreateRun
	_ func(*mocknuvla.RunInfo, string, string) []string                          = (*mocknuvla.RunInfo).Env
	_ func(string, string, *mocknuvla.RunInfo) error                             = mocknuvla.WriteEnvDir
	_ func(*mocknuvla.Server, string, string) (string, bool, error)              = (*mocknuvla.Server).Param
	_ func(*mocknuvla.Server, string) (map[string]mocknuvla.ParamValue, error)   = (*mocknuvla.Server).Params
	_ func(*mocknuvla.Server, string, string, string) error                      = (*mocknuvla.Server).SetParam
	_ func(*mocknuvla.Server, string) (string, error)                            = (*mocknuvla.Server).State
	_ func(*mocknuvla.Server, string, string) error                              = (*mocknuvla.Server).SetState
	_ func(*mocknuvla.Server, string, string, int) ([]string, error)             = (*mocknuvla.Server).ScaleUp
	_ func(*mocknuvla.Server, string, string, []int) error                       = (*mocknuvla.Server).ScaleDown
	_ func(*mocknuvla.Server, string, string) error                              = (*mocknuvla.Server).Abort
	_ func(*mocknuvla.Server, string, mocknuvla.Faults)                          = (*mocknuvla.Server).SetFaults
	_ func(*mocknuvla.Server) map[string]int64                                   = (*mocknuvla.Server).Counters
	_ func(*mocknuvla.Server)                                                    = (*mocknuvla.Server).ResetCounters
	_ func(*mocknuvla.Server, string, string) (mocknuvla.InstanceInfo, error)    = (*mocknuvla.Server).Instance

	_ = mocknuvla.Options{Logger: zerolog.Nop(), NoAuth: true}
	_ = mocknuvla.Faults{Latency: time.Second, Error5xxRatio: 0.1, DropRatio: 0.1}
	_ = mocknuvla.RunInfo{UUID: "", Instances: []mocknuvla.InstanceInfo{{Name: "", Node: "", Index: 1, APIKey: "", APISecret: ""}}}
	_ = mocknuvla.ParamValue{Value: "", IsSet: true}
)

from errors import ModelConfigError
from models.blocks import BLOCKS, BlockSpec, ResidualBlock, register_block
from models.build import build_model, param_report
from models.report import ParamReport
from models.resnet import ResNet

__all__ = ["BLOCKS", "BlockSpec", "ModelConfigError", "ParamReport", "ResNet", "ResidualBlock", "build_model",
           "param_report", "register_block"]
